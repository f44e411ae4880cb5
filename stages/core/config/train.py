"""The ``train`` section and its ``distributed`` part (``stages/train.py``, ``stages/training/``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stages.core.config.base import KeyedValueError, _Section


class DistributedParams(_Section):
    """How many processes train, and how they wait for each other (``stages/training/``).

    One process on one node trains in the stage's own process. Anything larger runs through PyTorch's
    elastic launcher (``torch.distributed.run``). *Where* a job runs (the head's address, this node's
    rank, the allocation's node count) is never a param: it changes with every allocation and would make
    every job retrain and write host names into ``dvc.lock``. It comes from the launcher's environment
    (Slurm, Kubernetes, torchrun) or the command line of ``python -m stages.training.job``.
    """

    nnodes: int = Field(1, ge=1, description="nodes taking part; the head node is one of them")
    nproc_per_node: int = Field(1, ge=1, description="training processes per node (one per GPU on CUDA)")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: NCCL on CUDA, gloo on CPU")
    join_timeout_s: float = Field(900.0, gt=0.0, description="longest wait for every node to join a training attempt")
    collective_timeout_s: float = Field(
        1800.0, gt=0.0, description="longest wait for one collective operation (the process group's timeout)"
    )
    max_restarts: int = Field(0, ge=0, description="times the launcher restarts all workers after a failure")

    @model_validator(mode="before")
    @classmethod
    def _where_is_not_a_param(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = {
                "rdzv_endpoint": "the endpoint comes from MASTER_ADDR/MASTER_PORT (Slurm, Kubernetes) or "
                "'python -m stages.training.job --endpoint host:port'",
                "rdzv_id": "the rendezvous name comes from the job (SLURM_JOB_ID, PET_RDZV_ID or --run-id)",
                "timeout_s": "it is now two keys: join_timeout_s and collective_timeout_s",
            }
            found = [f"'{key}' is no longer a param: {why}" for key, why in moved.items() if key in data]
            if found:
                raise ValueError("; ".join(found) + " (README: Training at scale)")
        return data

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nnodes * self.nproc_per_node


class LightningParams(_Section):
    """How the Lightning backend runs the loop (``train.backend: lightning``, ``stages/training/lightning/``).

    Read only when ``train.backend`` is ``lightning``. Under it, ``precision`` governs mixed precision
    and ``train.amp`` is not used (Ultralytics' AMP flag has no meaning for Lightning's precision plugins).
    """

    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="auto: one process trains alone, several as DDP; fsdp is refused (the backend's step)"
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = Field(
        "32-true", description="Lightning's precision plugin; 16-mixed needs CUDA"
    )
    accumulate_grad_batches: int | None = Field(
        None, ge=1, description="batches per optimizer step; null: max(round(nbs / batch), 1), as Ultralytics"
    )
    gradient_clip_val: float = Field(10.0, ge=0.0, description="gradient norm clip; 10 is Ultralytics' fixed clip")
    log_every_n_steps: int = Field(50, ge=1, description="training batches between two logged learning rates/losses")


def nbs_accumulation(global_batch: int, nbs: int) -> int:
    """Forward passes Ultralytics accumulates per optimizer step: ``max(round(nbs / batch), 1)``.

    Here, under the configuration, so that the params checks and the training recipe
    (``stages.training.recipe.accumulation``) read one formula.
    """
    return max(round(nbs / global_batch), 1)


# The parts of `train` that do not change what is trained: how long the nodes wait, how often to restart.
LAUNCH_ONLY_KEYS = ("join_timeout_s", "collective_timeout_s", "max_restarts")


def normalize_device(value: Any) -> str:
    """``train.device`` as Ultralytics takes it, from the forms users write.

    ``0``, ``"0"``, ``"cuda:0"`` -> ``"0"``; ``[0, 1]``, ``"0,1"``, ``"cuda:0,1"`` -> ``"0,1"``;
    ``"cpu"`` and ``"mps"`` stay as they are.

    Raises:
        ValueError: For anything else (a negative or repeated id, an unknown device type).
    """
    if isinstance(value, bool):
        raise ValueError(f"must be cpu, mps, a CUDA device id or a list of ids, got {value!r}")
    if isinstance(value, int):
        ids = [value]
    elif isinstance(value, list):
        ids = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in {"cpu", "mps"}:
            return text
        text = text.removeprefix("cuda:")
        ids = [part.strip() for part in text.split(",")]
    else:
        raise ValueError(f"must be cpu, mps, a CUDA device id or a list of ids, got {value!r}")
    parsed = []
    for item in ids:
        valid_int = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        if not (valid_int or (isinstance(item, str) and item.isdigit())):
            raise ValueError(f"must be cpu, mps, a CUDA device id or a list of ids, got {value!r}")
        parsed.append(int(item))
    if not parsed or len(set(parsed)) != len(parsed):
        raise ValueError(f"CUDA device ids must be listed once each, got {value!r}")
    return ",".join(str(i) for i in parsed)


class TrainParams(_Section):
    """Ultralytics training settings, passed explicitly to its trainer, and the large-batch recipe."""

    model: str = "yolo11n.yaml"
    epochs: int = Field(30, ge=1)
    imgsz: int = Field(160, ge=32)
    batch: int = Field(16, ge=1, description="global batch: images per forward pass over all processes")
    device: str = Field("cpu", description="cpu | mps | CUDA ids: 0, 0,1, [0, 1], cuda:0")
    workers: int = Field(2, ge=0)
    seed: int = 0
    deterministic: bool = True
    optimizer: Literal["auto", "SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"] = "auto"
    lr0: float = Field(0.01, gt=0.0)
    lrf: float = Field(0.01, gt=0.0, le=1.0, description="final learning rate as a fraction of the peak")
    cos_lr: bool = Field(False, description="cosine decay instead of linear")
    momentum: float = Field(0.937, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0005, ge=0.0)
    warmup_epochs: float = Field(3.0, ge=0.0)
    warmup_momentum: float = Field(0.8, ge=0.0, lt=1.0)
    warmup_bias_lr: float = Field(0.1, ge=0.0)
    nbs: int = Field(64, ge=1, description="nominal batch: Ultralytics accumulates gradients up to it")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="scale lr0 with global batch / base_batch (see README: Training at scale)"
    )
    base_batch: int = Field(16, ge=1, description="the global batch lr0 was chosen for")
    sync_bn: bool = Field(False, description="SyncBatchNorm when several CUDA processes train")
    patience: int = Field(100, ge=0)
    amp: bool = True
    cache: bool = False
    mosaic: float = Field(1.0, ge=0.0, le=1.0)
    close_mosaic: int = Field(10, ge=0)
    distributed: DistributedParams = Field(default_factory=DistributedParams)
    backend: Literal["ultralytics", "lightning"] = Field(
        "ultralytics", description="who runs the training loop: Ultralytics' trainer or PyTorch Lightning"
    )
    lightning: LightningParams = Field(default_factory=LightningParams)

    @field_validator("device", mode="before")
    @classmethod
    def _device_as_users_write_it(cls, value: Any) -> str:
        return normalize_device(value)

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (the model stride), got {value}")
        return value

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainParams:
        world = self.distributed.world_size
        if self.batch % world:
            raise ValueError(
                f"batch ({self.batch}) must be a multiple of the {world} training processes "
                f"(distributed.nnodes x distributed.nproc_per_node)"
            )
        devices = self.device.split(",") if self.device not in {"cpu", "mps"} else []
        # One process per listed GPU; NCCL refuses two ranks on one GPU, so one id for two processes is refused too.
        if devices and (len(devices) > 1 or world > 1) and len(devices) != self.distributed.nproc_per_node:
            raise ValueError(
                f"device lists {len(devices)} GPUs but distributed.nproc_per_node is "
                f"{self.distributed.nproc_per_node}: one process trains on each listed GPU"
            )
        if world > 1 and self.device == "mps":
            raise ValueError("several training processes need CUDA GPUs or the CPU, not mps")
        if self.sync_bn and world > 1 and self.device == "cpu":
            raise ValueError(
                "sync_bn needs CUDA: PyTorch's SyncBatchNorm trains only on GPUs; set sync_bn: false "
                "to train several CPU processes (each keeps its own batch norm statistics)"
            )
        if self.backend == "lightning":
            self._check_lightning()
        return self

    def _check_lightning(self) -> None:
        """Refuse what Lightning would silently change or fail on later, naming the key."""
        lightning = self.lightning
        nominal = nbs_accumulation(self.batch, self.nbs)
        if self.lr_scaling != "none" and lightning.accumulate_grad_batches not in (None, nominal):
            raise KeyedValueError(
                "train.lightning.accumulate_grad_batches",
                f"{lightning.accumulate_grad_batches} batches per step with lr_scaling: {self.lr_scaling}, whose "
                f"rule counts the images of a step from nbs ({nominal} batches of {self.batch}); set nbs "
                "for the accumulation you want (one rule for both backends), or leave this null",
            )
        if lightning.strategy == "fsdp":
            raise KeyedValueError(
                "train.lightning.strategy",
                "fsdp is not supported by the Lightning backend: it steps at Ultralytics' cadence by manual "
                "optimization inside the strategy's forward, where FSDP refuses a backward pass and the full "
                "parameters the EMA reads ('Expects BACKWARD_PRE or BACKWARD_POST state'); use ddp",
            )
        if lightning.precision == "16-mixed" and self.device in {"cpu", "mps"}:
            raise KeyedValueError(
                "train.lightning.precision",
                f"16-mixed needs CUDA (device is {self.device}); Lightning would "
                "silently train in bf16-mixed instead. Use bf16-mixed or 32-true",
            )

    def training_identity(self) -> dict[str, Any]:
        """The values that decide what is trained (not where the nodes meet): fingerprints compare these."""
        data = self.model_dump(mode="json")
        for key in LAUNCH_ONLY_KEYS:
            data["distributed"].pop(key)
        if self.backend == "ultralytics":
            # Runs of the Ultralytics backend keep the fingerprint they had before the Lightning backend
            # existed (an interrupted run still resumes), and Lightning's keys do not concern them.
            data.pop("backend")
            data.pop("lightning")
        return data
