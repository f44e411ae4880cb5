"""Lightning's resume checkpoint: written whole, and the epochs it holds.

The module saves ``last.ckpt`` at the end of every epoch (``trainer.save_checkpoint``, as
``ModelCheckpoint`` would, but after the epoch's validation). Lightning's checkpoint IO
opens the target and writes into it: a kill or a full disk mid-save left a truncated file. Here the
file is written into the scratch folder beside it, flushed, and put in place in one step
(``stages.training.checkpoints.publish``, as the Ultralytics backend's checkpoints are).

The checkpoint carries the pipeline's own state under ``PIPELINE_KEY`` (epochs done, the EMA, the best
fitness, the early-stopping state): the resume point is read from there, without Lightning.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

from stages.training import checkpoints

log = logging.getLogger(__name__)

FOLDER = "lightning"  # in the run folder: Lightning's checkpoint and logs
LAST = "last.ckpt"
PIPELINE_KEY = "yolo_pipeline"  # the pipeline's part of Lightning's checkpoint


def last_checkpoint(run_dir: Path) -> Path:
    """Where a run folder keeps Lightning's resume checkpoint."""
    return run_dir / FOLDER / LAST


def epochs_done(path: Path) -> int | None:
    """Epochs a Lightning checkpoint of this backend has completed, or ``None`` when it cannot be read whole.

    Loaded with ``weights_only=True``: the pipeline's part holds tensors and numbers only, and a resume
    loads the file anyway.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError) as exc:
        log.warning("checkpoint %s cannot be read (%s: %s)", path, type(exc).__name__, str(exc).splitlines()[0])
        return None
    state = ckpt.get(PIPELINE_KEY) if isinstance(ckpt, dict) else None
    return int(state["epochs_done"]) if isinstance(state, dict) and "epochs_done" in state else None


def save_whole(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` of ``checkpoint`` into a scratch folder beside ``path``, then put in place whole.

    Raises:
        OSError: Restated by ``checkpoints.checkpoint_error`` with the file and the space left.
    """
    import torch

    scratch = path.parent / checkpoints.SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)  # left by a save that was killed
    try:
        scratch.mkdir(parents=True)
        torch.save(checkpoint, scratch / path.name)
        checkpoints.publish(scratch, path.parent)
    except OSError as error:
        raise checkpoints.checkpoint_error(error, path) from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def whole_file_io() -> Any:
    """Lightning's ``TorchCheckpointIO`` whose saves go through :func:`save_whole` (imports Lightning)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class WholeFileCheckpointIO(TorchCheckpointIO):
        """Checkpoints put in place whole; loading and removing are Lightning's own."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            save_whole(checkpoint, target)

    return WholeFileCheckpointIO()
