"""End to end: the Lightning backend with two gloo processes through the stage's launch path (torchrun, ~15 s CPU).

The stage starts ``torch.distributed.run`` and its workers as for the Ultralytics backend; each worker
creates the process group and Lightning reuses it, reading ranks from torchrun's environment. Each
process trains its share of the images (Lightning's distributed sampler), and global rank 0 alone
validates and writes the run folder the stage publishes.
"""

from __future__ import annotations

import json
import logging

import pytest

from stages.core.config import parse_params
from stages.data.sample_data import SampleSpec, generate
from tests.conftest import needs_lightning, tiny_training_workspace

pytestmark = [pytest.mark.e2e, needs_lightning]


def test_two_gloo_processes_train_with_lightning_through_the_launch_path(tmp_path, caplog):
    import stages.train as stage

    root, _ = tiny_training_workspace(tmp_path)
    prepared = root / "data" / "prepared"
    generate(SampleSpec(out=prepared, train=8, val=4, size=64, seed=0))
    (prepared / "data.yaml").write_text(
        f"path: {prepared}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n"
    )
    train = {
        "backend": "lightning",
        "epochs": 2,
        "imgsz": 64,
        "batch": 4,
        "workers": 0,
        "optimizer": "SGD",
        "warmup_epochs": 1,
        "close_mosaic": 1,
        "distributed": {"nproc_per_node": 2, "join_timeout_s": 60},
    }
    cfg = stage.TrainConfig.from_params(parse_params({"train": train}), root)
    caplog.set_level(logging.INFO, logger="stages.training.launch")  # the workers' output, line by line
    result = stage.run(cfg)

    assert (result.trainer, result.backend, result.epochs_run) == ("lightning", "gloo", 2)
    metrics = json.loads(cfg.metrics.read_text())
    assert metrics["distributed"] == {"world_size": 2, "nnodes": 1, "nproc_per_node": 2}
    assert metrics["recipe"]["per_rank_batch"] == 2
    assert metrics["final_val_images"] == 4, "rank 0 validated the whole split alone"
    text = caplog.text
    # 8 images shared by 2 processes at 2 per batch: 2 batches each (unsharded, each would see 4).
    for rank in (0, 1):
        assert f"rank {rank} of 2: epoch 2, 2 batches" in text
