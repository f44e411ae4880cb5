"""What the pipeline adds to Ultralytics' own training arguments (no Ultralytics import here)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stages.training.recipe import Rule


class TrainerSettings(BaseModel):
    """Passed to ``PipelineTrainer``; built from ``params.yaml`` by ``stages.training.spec.trainer_settings``."""

    model_config = ConfigDict(frozen=True)

    lr_scaling: Rule = "none"
    base_batch: int = 16
    configured_lr0: float = 0.01  # train.lr0 as configured (optimizer: auto replaces it)
    sync_bn: bool = False
    backend: str = "gloo"  # resolved: nccl or gloo
    collective_timeout_s: float = 1800.0  # train.distributed.collective_timeout_s
    nnodes: int = 1
    nproc_per_node: int = 1
