"""The ``LightningDataModule`` over Ultralytics' training dataset (its augmentations, mosaic included).

The loader is a plain ``torch.utils.data.DataLoader`` with the dataset's own ``collate_fn``, so that
Lightning puts its ``DistributedSampler`` in (each process gets its share of every epoch). Lightning
asks for a loader every epoch (``reload_dataloaders_every_n_epochs=1``): from epoch
``epochs - close_mosaic`` on, the dataset's mosaic is closed first (``dataset.close_mosaic``, as
Ultralytics' ``_close_dataloader_mosaic``), and the new loader's workers start from the changed dataset
(workers hold copies of it). On CPU Ultralytics trains with no loader workers (its trainer sets
``workers=0``); so does this loader, the toolbox's arguments being the same.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from ultralytics.data.build import seed_worker


def mosaic_closed_at(epochs: int, close_mosaic: int) -> int | None:
    """The first epoch (0-based) trained without mosaic, or ``None`` when mosaic is never closed."""
    return max(epochs - close_mosaic, 0) if close_mosaic else None


class DetectionData(L.LightningDataModule):
    """Ultralytics' training dataset, one loader per epoch."""

    def __init__(self, toolbox: Any, per_rank_batch: int) -> None:
        super().__init__()
        self.toolbox = toolbox
        self.per_rank_batch = per_rank_batch
        self.mosaic_closed = False

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        tb = self.toolbox
        dataset = tb.train_dataset
        closing = mosaic_closed_at(tb.epochs, tb.args.close_mosaic)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if not self.mosaic_closed and closing is not None and epoch >= closing:
            self.mosaic_closed = True
            tb._close_dataloader_mosaic()  # Ultralytics' own, on the dataset its train_loader names (this one)
        workers = int(tb.args.workers)
        generator = torch.Generator()
        generator.manual_seed(int(tb.args.seed) + epoch)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.per_rank_batch,
            shuffle=True,
            num_workers=workers,
            collate_fn=dataset.collate_fn,
            pin_memory=tb.device.type == "cuda",
            worker_init_fn=seed_worker,
            generator=generator,
            drop_last=False,
        )
