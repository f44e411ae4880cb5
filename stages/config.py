"""Typed configuration: ``params.yaml`` parsed once into frozen pydantic models.

``params.yaml`` is the only configuration of the pipeline. Each stage has a section named after it;
``paths`` holds every input and output location, and ``dvc.yaml`` reads the same values through DVC
templating, so a path is written down exactly once. Unknown or misspelled keys are refused with an
error naming the key and the file.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stages.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
# OmegaConf's interpolation (``${oc.env:NAME}``, ``${other.key}``): never allowed in a params value.
INTERPOLATION = "${"
# Sections that shape the pipeline's outputs (the model card prints these). `promote` and
# `orchestration` steer what happens around the pipeline and never change an output of dvc repro.
PIPELINE_SECTIONS = (
    "paths",
    "prepare",
    "validate",
    "train",
    "evaluate",
    "export",
    "deploy",
    "engine",
    "benchmark",
    "report",
)


class _Section(BaseModel):
    """Base of every params section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def relative_inside_workspace(value: str) -> str:
    """``value`` when it is a relative path that stays inside the workspace.

    Raises:
        ValueError: For an absolute path, one with ``..``, or an empty one.
    """
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"must be a relative path inside the workspace, got {value!r}")
    return value


# The entries of ``paths`` that stages only read; every other one is written (an output).
INPUT_KEYS = frozenset({"dataset", "weights"})
# What no output may be, hold or lie in, at the top of the workspace: DVC's and git's folders and the
# code and project files. An output there would be deleted or replaced by DVC or by promotion.
RESERVED = frozenset(
    {
        ".dvc",
        ".dvc-storage",  # the default local DVC remote (.dvc/config): every pushed version lives there
        ".git",
        ".github",
        ".ci",
        ".venv",
        ".dvcignore",
        ".gitignore",
        "dvc.yaml",
        "dvc.lock",
        "params.yaml",
        "pyproject.toml",
        "makefile",
        "readme.md",
        "prefect.yaml",
        "prefect.toml",
        "stages",
        "flows",
        "tests",
        "scripts",
        "benchmarks",
    }
)


class KeyedValueError(ValueError):
    """A refused value found by a check across keys, with the key at fault (the error names it)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def _parts(value: str) -> tuple[str, ...]:
    """The parts of a relative path, case-folded (a case-insensitive disk makes ``Data`` ``data``)."""
    return tuple(part.casefold() for part in PurePosixPath(value).parts)


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one of two paths is the other or lies inside it."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _reserved(parts: tuple[str, ...]) -> str:
    """Why an output at ``parts`` would destroy the project (``""`` when it would not)."""
    if parts and parts[0] in RESERVED:
        return f"lies in or is '{parts[0]}', which belongs to the project (DVC, git or the code)"
    return ""


class PathsParams(_Section):
    """Where every stage reads and writes, relative to the workspace root (the folder of ``dvc.yaml``)."""

    dataset: str = "data/dataset"
    prepared: str = "data/prepared"
    weights: str = "weights"
    environment: str = "reports/environment.json"
    validate_report: str = "reports/validate.json"
    validate_summary: str = "reports/validate.md"
    train_dir: str = "models/train"
    train_runs: str = ".cache/train-runs"
    model: str = "models/best.pt"
    train_metrics: str = "metrics/train.json"
    train_plot: str = "plots/train_curves.csv"
    lr_plot: str = "plots/lr.csv"
    train_report: str = "reports/train.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    quality_metrics: str = "metrics/quality.json"
    deploy_dir: str = "models/deploy"
    export_metrics: str = "metrics/export.json"
    export_report: str = "reports/export.json"
    deploy_metrics: str = "metrics/deploy.json"
    deploy_report: str = "reports/deploy.json"
    engine_dir: str = "models/engine"
    engine_metrics: str = "metrics/engine.json"
    engine_report: str = "reports/engine.json"
    engine_timing_cache: str = "models/tensorrt-cache"
    benchmark_metrics: str = "metrics/benchmark.json"
    deployment_metrics: str = "metrics/deployment.json"
    benchmark_report: str = "reports/benchmark.json"
    latency_plot: str = "plots/latency.csv"
    throughput_plot: str = "plots/throughput.csv"
    pr_curve_plot: str = "plots/pr_curve.csv"
    confusion_plot: str = "plots/confusion.csv"
    val_predictions_plot: str = "plots/val_predictions.png"
    model_card: str = "reports/model_card.md"
    model_card_html: str = "reports/model_card.html"
    production: str = "models/production"
    promotion_report: str = "reports/promotion.json"
    tune_report: str = "reports/tune.json"
    tune_studies: str = ".cache/tune"

    @field_validator("*")
    @classmethod
    def _relative_inside_workspace(cls, value: str) -> str:
        return relative_inside_workspace(value)

    @model_validator(mode="after")
    def _outputs_apart(self) -> PathsParams:
        # Outputs are replaced, renamed or deleted as a whole (DVC removes a stage's outputs before
        # running it, promotion swaps a folder): an output that is, holds or lies in another entry,
        # the dataset, DVC's or git's folder or the code would take that with it.
        entries = {name: _parts(value) for name, value in self}
        dataset = entries["dataset"]
        fields = type(self).model_fields
        # The keys changed from their defaults first: when two overlap, the changed one is at fault.
        outputs = sorted(
            (n for n in entries if n not in INPUT_KEYS), key=lambda n: getattr(self, n) == fields[n].default
        )
        for name in outputs:
            path = entries[name]
            if _overlap(path, dataset):
                where = "lies inside" if len(path) >= len(dataset) else "holds"
                raise KeyedValueError(
                    f"paths.{name}", f"paths.{name} ({getattr(self, name)}) {where} paths.dataset ({self.dataset})"
                )
            reserved = _reserved(path)
            if reserved:
                raise KeyedValueError(f"paths.{name}", f"paths.{name} ({getattr(self, name)}) {reserved}")
            for other, other_path in entries.items():
                if other != name and _overlap(path, other_path):
                    raise KeyedValueError(
                        f"paths.{name}",
                        f"paths.{name} ({getattr(self, name)}) overlaps paths.{other} ({getattr(self, other)}): "
                        "replacing one would delete the other",
                    )
        return self

    def resolve(self, name: str, root: Path) -> Path:
        """Absolute path of the entry ``name`` under the workspace ``root``, links followed.

        Raises:
            ConfigError: When ``name`` is an output and, once links are followed, lies outside
                ``root`` or in a place no output may be (``.dvc``, ``.git``, the code, the dataset).
        """
        path = (root / getattr(self, name)).resolve()
        if name in INPUT_KEYS:
            return path  # inputs are only read: a dataset linked in from a larger disk is fine
        workspace = root.resolve()
        key = f"paths.{name}"
        if not path.is_relative_to(workspace):
            raise ConfigError(
                f"{key} ({getattr(self, name)}) leads outside the workspace ({workspace}) through a link, "
                f"to {path}: outputs are replaced and deleted, so they must stay inside",
                key=key,
            )
        inside = _parts(path.relative_to(workspace).as_posix())
        reserved = _reserved(inside) if inside else "is the workspace itself"
        if not reserved and inside != _parts(getattr(self, name)):
            # A link followed: where it leads must keep apart from every other entry, too.
            reserved = next(
                (f"overlaps paths.{o} ({v})" for o, v in self if o != name and _overlap(inside, _parts(v))), ""
            )
        if not reserved:
            dataset = (root / self.dataset).resolve()
            if path == dataset or dataset in path.parents or path in dataset.parents:
                reserved = f"overlaps paths.dataset ({self.dataset}, {dataset})"
        if reserved:
            raise ConfigError(
                f"{key} ({getattr(self, name)}) leads through a link to {path}, which {reserved}", key=key
            )
        return path

    def onnx_model(self, root: Path) -> Path:
        """The exported ONNX model in ``deploy_dir`` (absent when a failed gate stopped the export)."""
        return self.resolve("deploy_dir", root) / "model.onnx"


class PrepareParams(_Section):
    """How the input dataset is turned into the YOLO layout that training reads."""

    format: Literal["auto", "yolo", "voc", "coco"] = "auto"
    classes: list[str] = Field(default_factory=list, description="VOC class names in id order; empty: sorted")
    include_difficult: bool = Field(False, description="keep VOC objects marked difficult")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    link: Literal["symlink", "hardlink", "copy"] = "symlink"

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be unique")
        return value


class ValidateParams(_Section):
    """Dataset checks and their thresholds."""

    workers: int = Field(0, ge=0, description="processes for image checks; 0 means one per core")
    min_box_pixels: float = Field(2.0, ge=0.0, description="boxes narrower or shorter than this warn")
    max_outside_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="boxes with more of their area outside the image are errors, less warn"
    )
    duplicate_iou: float = Field(0.95, gt=0.0, le=1.0, description="IoU above which two boxes are duplicates")
    decode: bool = Field(True, description="decode every image's pixels; false: headers and end markers only")
    examples_per_code: int = Field(5, ge=1, description="files listed per problem code in the summary")
    # PIL's own default: 89.5 Mpx is 256 MiB once decoded as RGB, per image and per worker process,
    # and more than any camera or 8K frame; training shrinks images to train.imgsz anyway.
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="images with more pixels (from the header) are errors; train gets the same limit"
    )


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
        return self

    def training_identity(self) -> dict[str, Any]:
        """The values that decide what is trained (not where the nodes meet): fingerprints compare these."""
        data = self.model_dump(mode="json")
        for key in LAUNCH_ONLY_KEYS:
            data["distributed"].pop(key)
        return data


class EvaluateParams(_Section):
    """Validation settings and the quality gates the model must pass."""

    min_map50: float = Field(0.0, ge=0.0, le=1.0)
    min_map50_95: float = Field(0.0, ge=0.0, le=1.0)
    min_class_map50: dict[str, float] = Field(default_factory=dict)
    batch: int = Field(16, ge=1)
    conf: float = Field(0.001, gt=0.0, lt=1.0)
    iou: float = Field(0.7, gt=0.0, le=1.0)
    plot_images: int = Field(8, ge=1, description="validation images drawn with their true and predicted boxes")
    plot_conf: float = Field(
        0.25, gt=0.0, lt=1.0, description="confidence of the boxes drawn and counted in the confusion matrix"
    )

    @field_validator("min_class_map50")
    @classmethod
    def _floors_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, floor in value.items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"floor for class {name!r} must be within [0, 1], got {floor}")
        return value


class ExportParams(_Section):
    """ONNX export and the parity check against PyTorch."""

    opset: int = Field(17, ge=11)
    simplify: bool = True
    dynamic: bool = Field(
        False, description="a free batch axis (the image size stays train.imgsz); false: the static export.batch"
    )
    batch: int = Field(1, ge=1, description="static batch size of the exported model")
    parity_images: int = Field(8, ge=1, description="validation images used for the parity check")
    max_box_diff_px: float = Field(0.05, gt=0.0, description="largest allowed |ONNX - PyTorch| on box outputs, px")
    max_score_diff: float = Field(1e-3, gt=0.0, description="largest allowed |ONNX - PyTorch| on class scores")


class Int8Params(_Section):
    """CPU INT8: ONNX Runtime static Q/DQ and OpenVINO NNCF quantization (``stages/deploy/int8.py``)."""

    calibration_images: int = Field(
        64, ge=1, description="train images (never val) the activation ranges come from, drawn at random"
    )
    calibration_seed: int = Field(0, ge=0, description="seed of the random draw of those train images")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    target_cpu: Literal["auto", "vnni", "no-vnni"] = Field(
        "auto",
        description="the CPU the INT8 artifacts run on: vnni (x86 VNNI/AMX, ARM dot product: 8-bit weights), "
        "no-vnni (x86 AVX2/AVX-512 without VNNI, whose 16-bit pair sums saturate: 7-bit weights); "
        "auto: this machine's CPU flags",
    )


class MaxDropParams(_Section):
    """Largest mAP50-95 drop against the PyTorch model (a fraction: 0.004 is 0.4 points) per precision."""

    fp32: float = Field(0.002, ge=0.0, le=1.0)
    fp16: float = Field(0.005, ge=0.0, le=1.0)
    int8: float = Field(0.01, ge=0.0, le=1.0)


DeployTarget = Literal["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "torchscript-fp32"]


class DeployParams(_Section):
    """Which deployable artifacts ``export`` builds, and the accuracy each must keep to be deployable."""

    targets: list[DeployTarget] = Field(default_factory=lambda: ["onnx-fp32", "onnx-int8"])
    max_drop: MaxDropParams = Field(default_factory=MaxDropParams)
    int8: Int8Params = Field(default_factory=Int8Params)
    eval_images: int = Field(0, ge=0, description="validation images each artifact's mAP is measured on; 0 = all")
    reference_tolerance: float = Field(
        0.0005,
        ge=0.0,
        le=1.0,
        description="largest |PyTorch reference - Ultralytics' validator| mAP50-95 (square letterbox, same images) "
        "before the gate refuses to measure anything against the reference",
    )

    @field_validator("targets")
    @classmethod
    def _onnx_first(cls, value: list[str]) -> list[str]:
        # Every other artifact is built from, or checked against, the FP32 ONNX model.
        if "onnx-fp32" not in value:
            raise ValueError("must include onnx-fp32 (the other artifacts are built from it)")
        if len(set(value)) != len(value):
            raise ValueError("lists a target twice")
        return value


class EngineParams(_Section):
    """TensorRT engine build."""

    required: bool = False
    precision: Literal["fp16", "fp32", "int8"] = "fp16"
    batch_sizes: list[PositiveInt] = Field(
        default_factory=list,
        description="batch sizes the engine's optimization profile covers (first: the one it is tuned for); "
        "empty: export.batch. More than one needs export.dynamic: true (a dynamic batch axis; the image size "
        "stays fixed); the engine never takes a batch above the largest",
    )
    workspace_gib: float = Field(2.0, gt=0.0)
    device: str = Field(
        "cuda",
        pattern=r"^cuda(:\d+)?$",
        description="the CUDA device the engine is built and gated on: cuda (the current one) or cuda:N",
    )


class BenchmarkParams(_Section):
    """Latency and throughput measurement."""

    iterations: int = Field(50, ge=1, description="timed forward passes (and end-to-end calls) per round")
    warmup: int = Field(10, ge=0, description="untimed calls before each timed step, in every round")
    batch: int = Field(1, ge=1)
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for CPU backends; the measuring process is pinned to that many CPUs (the "
        "lowest-numbered it may use), recorded per row; 0: every core this process may use",
    )
    rounds: int = Field(
        5,
        ge=1,
        description="interleaved rounds; percentiles pool every round's calls, cv is the spread of the round medians",
    )
    batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [1, 8],
        description="throughput in images/s per batch size, for every backend whose artifact takes that batch",
    )
    sweep_iterations: int = Field(
        20, ge=5, description="timed calls per batch size per round in the throughput sweep (after `warmup`)"
    )
    backends: list[
        Literal[
            "onnxruntime-cpu",
            "onnxruntime-cpu-int8",
            "openvino-cpu",
            "openvino-cpu-int8",
            "torchscript-cpu",
            "pytorch-cpu",
            "onnxruntime-cuda",
            "pytorch-cuda",
            "pytorch-cuda-graph",
            "pytorch-cuda-graph-fp32",
            "tensorrt",
        ]
    ] = Field(
        default_factory=lambda: ["onnxruntime-cpu", "onnxruntime-cpu-int8", "pytorch-cpu"],
        description="backends to measure; GPU ones fail the stage when unavailable, "
        "deploy artifacts not built or not deployable are skipped with the reason",
    )
    auto_gpu: bool = Field(True, description="also measure every GPU backend that is available here")


class PromoteParams(_Section):
    """When a trained model replaces the production one."""

    max_map50_95_drop: float = Field(
        0.0, ge=0.0, le=1.0, description="largest mAP50-95 drop against production that still promotes"
    )
    version_with_dvc: bool = Field(True, description="dvc add the production folder after promoting")
    commit: bool = Field(
        True, description="git commit the production pointer and tag it production-v<N> (in a git repository)"
    )


class OrchestrationParams(_Section):
    """Prefect flow behaviour: retries, timeouts and the workspace lock."""

    train_retries: int = Field(2, ge=0, description="retries of a crashed training; each resumes from last.pt")
    retry_delay_s: int = Field(10, ge=0)
    stage_timeout_s: dict[str, int] = Field(
        default_factory=lambda: {"train": 86400, "default": 3600},
        description="per-stage timeout in seconds; 'default' for the others",
    )
    lock_timeout_s: int = Field(60, ge=0, description="how long a second run waits for the workspace")

    @field_validator("stage_timeout_s")
    @classmethod
    def _known_stages(cls, value: dict[str, int]) -> dict[str, int]:
        from stages import PIPELINE

        unknown = set(value) - {*PIPELINE, "default"}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        if "default" not in value:
            raise ValueError("needs a 'default' entry")
        return value


class ReportParams(_Section):
    """Model card contents."""

    title: str = "YOLO detector"


class SearchDim(_Section):
    """One dimension of the search space: a range of numbers or a list of choices for one params key."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = Field(None, description="float/int: smallest value")
    high: int | float | None = Field(None, description="float/int: largest value (included)")
    log: bool = Field(False, description="float/int: sample on a log scale (low > 0)")
    step: int | float | None = Field(None, description="float/int: only low + k * step (not with log)")
    choices: list[bool | int | float | str | None] | None = Field(None, description="categorical: the values")

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes choices only, not low, high, log or step")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("lists a choice twice")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low and high, not choices")
        if self.low is None or self.high is None or isinstance(self.low, bool) or isinstance(self.high, bool):
            raise ValueError(f"{self.type} needs numbers low and high")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("int needs whole numbers low, high and step")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        return self

    def bounds(self) -> list[Any]:
        """The values checked against the params model: both ends of a range, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


class TuneMetricParams(_Section):
    """The number a study optimizes: a dotted key in a metrics file the tuned stages write."""

    file: str = Field("metrics/evaluate.json", description="relative to the workspace")
    key: str = Field("map50_95", min_length=1, description="dotted key in that file, e.g. per_class.disc.ap50")

    @field_validator("file")
    @classmethod
    def _relative_inside_workspace(cls, value: str) -> str:
        return relative_inside_workspace(value)


class TuneParams(_Section):
    """Hyper-parameter search (``python -m flows.tune``): an Optuna study, one ``dvc exp run`` per trial.

    Read by ``flows/tuning.py`` only; no DVC stage depends on it, so changing the search space
    retrains nothing.
    """

    study: str = Field(
        "yolo-tune",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="study name: the same name continues the same study; trials are experiments <study>-<n>",
    )
    seed: int = Field(0, description="seed of the sampler (offset by the trials already run, when resuming)")
    sampler: Literal["tpe"] = "tpe"
    target: str = Field(
        "evaluate", description="the stage each trial reproduces, with every stage before it; empty: all of them"
    )
    metric: TuneMetricParams = Field(default_factory=TuneMetricParams)
    direction: Literal["maximize", "minimize"] = "maximize"
    trial_timeout_s: int = Field(0, ge=0, description="kill a trial's dvc exp run after this long; 0: no limit")
    space: dict[str, SearchDim] = Field(
        default_factory=dict, description="dotted params key (train.lr0) -> its range or choices"
    )
    workers: int = Field(1, ge=1, description="trials run at a time; above 1 each runs in its own clone")
    storage: str = Field(
        "",
        description="Optuna storage: '' = <tune_studies>/<study>.db, sqlite:///FILE, journal:FILE or "
        "postgresql+psycopg2://USER@HOST/DB (password from the environment, never here)",
    )
    git_remote: str = Field("", description="git remote each trial's experiment is pushed to (dvc exp push); ''")

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        problem = storage_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("target")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        from stages import PIPELINE

        if value and value not in PIPELINE:
            raise ValueError(f"unknown stage {value!r}; stages are {list(PIPELINE)}")
        return value

    @field_validator("space")
    @classmethod
    def _keys_name_params(cls, value: dict[str, SearchDim]) -> dict[str, SearchDim]:
        for key, dim in value.items():
            problem = _not_a_params_key(key)
            if problem:
                raise ValueError(f"space key {key!r} {problem}")
            if dim.type == "float" and _leaf_annotation(key) in (int, "int"):
                raise ValueError(f"space key {key!r} holds a whole number: use type int, not float")
        return value


STORAGE_SCHEMES = ("sqlite", "journal", "postgresql", "mysql")


def storage_url_problem(url: str) -> str:
    """Why ``url`` cannot be a study's storage (``tune.storage``), or ``""`` when it can.

    A password in the URL is refused: ``params.yaml`` is committed and every experiment carries it.
    PostgreSQL reads it from the environment instead (``PGPASSWORD`` or ``PGPASSFILE``, libpq's own).
    """
    if not url:
        return ""
    scheme, sep, rest = url.partition(":")
    base = scheme.split("+", 1)[0]
    if not sep or base not in STORAGE_SCHEMES:
        return f"storage {url!r} is not sqlite:///FILE, journal:FILE or postgresql+DRIVER://USER@HOST/DB"
    if base == "journal":
        return "" if rest.strip("/") else "journal: needs a file, e.g. journal:.cache/tune/study.log"
    if base == "sqlite":
        return "" if rest.startswith("///") and rest[3:] else "sqlite needs a file: sqlite:///FILE"
    netloc = rest[2:].split("/", 1)[0] if rest.startswith("//") else ""
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo:
        return (
            "storage URL holds a password: remove it and give it in the environment "
            "(PGPASSWORD or a PGPASSFILE for PostgreSQL)"
        )
    return "" if netloc else f"{base} needs a server: {base}+DRIVER://USER@HOST[:PORT]/DB"


def _leaf_annotation(key: str) -> Any:
    """The annotation of the params field a valid dotted ``key`` names."""
    model: Any = Params
    field = None
    for part in key.split("."):
        field = next(f for name, f in model.model_fields.items() if part == (f.alias or name))
        model = field.annotation
    return field.annotation if field else None


def _not_a_params_key(key: str) -> str:
    """Why ``key`` (dotted, as in ``params.yaml``) cannot be tuned, or ``""`` when it can."""
    model: type[BaseModel] = Params
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{'.'.join([*parts[:depth], close[0]])}'?" if close else ""
            return f"is not a params key: '{'.'.join(parts[: depth + 1])}' does not exist{hint}"
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        last = depth == len(parts) - 1
        if last and nested:
            return "names a whole section, not one value"
        if not last and not nested:
            return f"is not a params key: '{'.'.join(parts[: depth + 1])}' holds a value, not a section"
        if nested:
            model = field.annotation  # type: ignore[assignment]
    if parts[0] in {"tune", "paths"}:
        return f"is not a pipeline setting ('{parts[0]}' is never tuned)"
    return ""


class Params(_Section):
    """All of ``params.yaml``."""

    paths: PathsParams = Field(default_factory=PathsParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)
    deploy: DeployParams = Field(default_factory=DeployParams)
    engine: EngineParams = Field(default_factory=EngineParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    report: ReportParams = Field(default_factory=ReportParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)
    tune: TuneParams = Field(default_factory=TuneParams)  # last: its check reads every section above

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("tune")
    @classmethod
    def _space_within_params(cls, value: TuneParams, info: ValidationInfo) -> TuneParams:
        # Both ends of each range, and every choice, must be values the params accept (train.lr0 > 0,
        # train.imgsz a multiple of 32, ...), checked against the rest of this file. Sections have no
        # checks across each other, so validating the key's own section is enough (and cheap: every
        # stage process loads the params).
        fields = {field.alias or name: (name, field) for name, field in cls.model_fields.items()}
        for key, dim in value.space.items():
            section, _, rest = key.partition(".")
            name, field = fields[section]
            if name not in info.data:
                continue  # the section failed validation: that error is reported
            current = info.data[name].model_dump(mode="json", by_alias=True)
            for candidate in dim.bounds():
                data = copy.deepcopy(current)
                set_dotted(data, rest, candidate)
                try:
                    field.annotation.model_validate(data)
                except ValidationError as exc:
                    detail = "; ".join(f"{'.'.join(map(str, (section, *e['loc'])))}: {e['msg']}" for e in exc.errors())
                    raise ValueError(f"space key {key!r}: the value {candidate!r} is refused: {detail}") from None
        return value

    def as_dict(self) -> dict[str, Any]:
        """The params as plain data, with the section names used in ``params.yaml``."""
        return self.model_dump(mode="json", by_alias=True)


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` (``train.lr0``) of nested params data.

    Raises:
        KeyError: When a part of ``key`` is missing.
    """
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at a dotted ``key`` of nested params data, creating sections as needed."""
    *sections, last = key.split(".")
    for part in sections:
        data = data.setdefault(part, {})
    data[last] = value


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """``"; did you mean 'x'?"`` for an unknown key that is close to a known one of its section."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:  # down to the section that holds the unknown key
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    known = [f.alias or name for name, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _first_interpolation(data: Any, where: tuple[str, ...]) -> tuple[str, str] | None:
    """The first dotted key (list items by index) whose value or name holds ``${``, with that text."""
    if isinstance(data, dict):
        for name, value in data.items():
            key = (*where, str(name))
            if INTERPOLATION in str(name):
                return ".".join(key), str(name)
            found = _first_interpolation(value, key)
            if found:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _first_interpolation(value, (*where, str(index)))
            if found:
                return found
    elif isinstance(data, str) and INTERPOLATION in data:
        return ".".join(where), data
    return None


def parse_params(data: Any, source: Path | str = DEFAULT_PARAMS) -> Params:
    """Validate already-loaded params data.

    Args:
        data: The mapping read from ``params.yaml``.
        source: Where it came from, for error messages.

    Returns:
        The validated params.

    Raises:
        ConfigError: When a key is unknown, a value is invalid or holds an interpolation (``${``);
            names the key and the file.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", path=source)
    interpolated = _first_interpolation(data, ())
    if interpolated is not None:
        key, value = interpolated
        raise ConfigError(
            f"'{key}' holds {value!r}: '${{' starts an interpolation, which DVC resolves through OmegaConf when "
            "it rewrites this file (dvc exp run --set-param, every tuning trial), e.g. ${oc.env:...} copies an "
            "environment variable (a secret) into params.yaml and the experiment's commit; an escaped \\${ comes "
            "back unescaped after one such rewrite, so '${' may not appear at all",
            path=source,
            key=key,
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = []
        first_key = None
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, KeyedValueError):
                key = cause.key
            first_key = first_key or key
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'{_suggestion(err['loc'])}")
            else:
                problems.append(f"'{key}': {err['msg']}")
        raise ConfigError("; ".join(problems), path=source, key=first_key) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: The params file.

    Returns:
        The validated params.

    Raises:
        ConfigError: When the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("params file not found", path=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    return parse_params(data, source=path)
