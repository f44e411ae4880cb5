"""Ultralytics' trainer as a toolbox for the Lightning loop: everything but its ``train()``.

``LightningToolbox`` is the pipeline's ``PipelineTrainer`` (so checkpoints are written whole, the LR
rule applies, the recipe, epoch statistics and final validation are recorded as for the Ultralytics
backend) built with the same arguments (``trainer.overrides``). :func:`build` does what Ultralytics'
``_setup_train`` does for one process, minus what Lightning now owns: no DDP wrap (Lightning wraps),
no AMP check or grad scaler (the precision plugin), no SyncBN conversion (Lightning's
``sync_batchnorm``), no training data loader (``data``: a plain loader Lightning shards).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.utils import LOCAL_RANK, RANK
from ultralytics.utils.checks import check_imgsz
from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA, unwrap_model

from stages.training import ddp
from stages.training.lightning.schedule import accumulation
from stages.training.settings import TrainerSettings
from stages.training.trainer import PipelineTrainer, overrides


class LightningToolbox(PipelineTrainer):
    """``PipelineTrainer`` whose loop is Lightning's; it records ``trainer: lightning`` in ``recipe.json``."""

    trainer_name = "lightning"

    def set_model_attributes(self) -> None:
        # Lightning converts to SyncBatchNorm itself (Trainer(sync_batchnorm=...)), after the EMA copy is made.
        DetectionTrainer.set_model_attributes(self)

    def train(self) -> None:
        raise RuntimeError("the Lightning backend runs the loop; the toolbox's train() is never called")


def build(
    hyper: Any,
    data_yaml: Path,
    run_dir: Path,
    model_source: str,
    settings: TrainerSettings,
    world_size: int,
) -> LightningToolbox:
    """The toolbox, set up as Ultralytics' ``_setup_train`` would before its first epoch.

    Args:
        hyper: ``TrainParams``.
        data_yaml: The prepared ``data.yaml``.
        run_dir: The run folder (``args.yaml``, ``results.csv``, ``weights/``); written by global rank 0.
        model_source: A model YAML name or a local ``.pt`` path.
        settings: What the pipeline adds to Ultralytics' arguments.
        world_size: Training processes over all nodes.

    Returns:
        The toolbox with ``model``, ``train_dataset``, ``test_loader``, ``optimizer``, ``lf``, ``validator``,
        ``ema``, ``stopper`` and ``accumulate`` set.
    """
    results = run_dir / "results.csv"
    # Ultralytics removes results.csv of a run that is not its own resume; a Lightning resume keeps it.
    kept = results.read_bytes() if results.is_file() else None
    tb = LightningToolbox(overrides=overrides(hyper, data_yaml, run_dir, model_source), settings=settings)
    if kept is not None and not results.exists():
        results.write_bytes(kept)
    tb.world_size = world_size
    if tb.device.type == "cuda" and LOCAL_RANK != -1:
        # Ultralytics' select_device picks the first listed GPU in every process; a launched process trains
        # on its local rank's (the device Lightning gives it too), and the EMA must live there.
        tb.device = torch.device("cuda", ddp.cuda_index(hyper.device, LOCAL_RANK))
        torch.cuda.set_device(tb.device)
    tb.setup_model()  # a model YAML, or the weights of a local .pt (a fine-tune start, as Ultralytics)
    tb.model = tb.model.to(tb.device)
    tb.set_model_attributes()
    tb.stride = max(int(tb.model.stride.max()), 32)
    tb.args.imgsz = check_imgsz(tb.args.imgsz, stride=tb.stride, floor=tb.stride, max_dim=1)
    tb.freeze_layer_names = [".dfl"]  # Ultralytics always freezes the DFL decoding layer
    for name, param in tb.model.named_parameters():
        param.requires_grad = not any(frozen in name for frozen in tb.freeze_layer_names)
    tb.amp = hyper.lightning.precision != "32-true"
    # Only read by save_model (the checkpoint's "scaler"); Lightning's precision plugin holds the real one.
    tb.scaler = torch.amp.GradScaler("cuda", enabled=False)

    per_rank = hyper.batch // world_size
    tb.train_dataset = tb.build_dataset(tb.data["train"], mode="train", batch=per_rank)
    # Validation runs on global rank 0 alone, over the whole split (Ultralytics' own loader, no sampler).
    tb.test_loader = tb.get_dataloader(tb.data[tb.args.split], batch_size=per_rank * 2, rank=-1, mode="val")
    DetectionValidator._check_max_det(tb.args, {"train": tb.train_dataset, "val": tb.test_loader.dataset})
    unwrap_model(tb.model).set_head_attr(max_det=tb.args.max_det)

    batches = math.ceil(len(tb.train_dataset) / per_rank)
    tb.accumulate = min(
        accumulation(hyper.batch, hyper.nbs, hyper.lightning.accumulate_grad_batches), batches * tb.epochs
    )
    weight_decay = tb.args.weight_decay * tb.batch_size * tb.accumulate / tb.args.nbs  # as Ultralytics scales it
    iterations = math.ceil(len(tb.train_dataset) / max(tb.batch_size, tb.args.nbs)) * tb.epochs
    tb.optimizer = tb.build_optimizer(
        model=tb.model,
        name=tb.args.optimizer,
        lr=tb.args.lr0,
        momentum=tb.args.momentum,
        decay=weight_decay,
        iterations=iterations,
    )
    tb._setup_scheduler()  # tb.lf; the loop sets the epoch's rate itself (module.epoch_lr)
    tb.validator = tb.get_validator()
    tb.train_loader = _Counted(tb.train_dataset)  # what set_class_weights, the epoch statistics and closing mosaic read
    tb.set_class_weights()
    tb.ema = ModelEMA(tb.model)
    tb.metrics = dict.fromkeys(tb.validator.metrics.keys, 0.0)
    tb.stopper, tb.stop = EarlyStopping(patience=tb.args.patience), False
    if RANK in {-1, 0}:
        tb._write_recipe()
    return tb


class _Counted:
    """What the toolbox reads of a training loader: its dataset (the real loaders are Lightning's)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
