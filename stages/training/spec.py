"""The description of one training run, resolved once by the head and read by every launched process.

The head's stage resolves the run (which run folder, which model, which trainer settings, the node
facts every other node is compared with) into a :class:`LaunchSpec`, writes it into the run folder and,
in a multi-node job, hands it to the other nodes. Launched processes never recompute any of it: where
``dvc.lock`` lacks a ``prepare`` entry, recomputing the fingerprint in a worker gave another run folder
than the one the head publishes from.

Also here: which checkpoint a run resumes from. A run folder keeps ``last.pt`` and, once a second
checkpoint is saved, the one before it (``last.prev.pt``); a ``last.pt`` that cannot be read (cut short
by a kill or a full disk) falls back to the previous one instead of failing every retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.core.common import write_json, write_text
from stages.core.config import TrainParams
from stages.core.data_version import dvc_lock_stage
from stages.core.errors import ConfigError
from stages.training import facts as node_facts
from stages.training.settings import TrainerSettings

log = logging.getLogger(__name__)

FINGERPRINT = "pipeline_run.json"  # in the run folder: which configuration and data the run belongs to
SPEC = "launch.json"  # in the run folder: the spec the head's launched processes read
STARTS = "starts.jsonl"  # in the run folder: one line per start of global rank 0 (attempts, restarts)
PREVIOUS = "last.prev.pt"  # the checkpoint before last.pt, in the run folder's weights/


class LaunchSpec(BaseModel):
    """Everything a launched process needs; paths are relative to each node's own workspace."""

    fingerprint: str
    run_dir: str
    data_yaml: str
    model: str  # train.model as configured: each node resolves it in its own workspace
    hyper: TrainParams
    settings: TrainerSettings
    max_image_pixels: int
    head: node_facts.NodeFacts


def resolve_model(model: str, workspace: Path, ultralytics_root: Path) -> str:
    """Where the model comes from: a local file, or a model YAML shipped with Ultralytics.

    Args:
        model: The ``train.model`` param.
        workspace: The workspace root (relative paths are resolved against it).
        ultralytics_root: The installed ``ultralytics`` package folder.

    Returns:
        An absolute path, or the name of a bundled model YAML.

    Raises:
        ConfigError: When the value names neither; in particular a ``.pt`` that is not a local file,
            which Ultralytics would otherwise try to download.
    """
    local = Path(model) if Path(model).is_absolute() else workspace / model
    if local.is_file():
        return str(local.resolve())
    if model.endswith((".yaml", ".yml")) and "/" not in model:
        # Ultralytics maps a scaled name (yolo11n.yaml) to its family file (yolo11.yaml).
        family = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(model).stem) + Path(model).suffix
        bundled = ultralytics_root / "cfg" / "models"
        if any(bundled.rglob(model)) or any(bundled.rglob(family)):
            return model
        raise ConfigError(
            f"no local file and no model YAML bundled with Ultralytics named {model!r}", key="train.model"
        )
    pointer = local.with_name(local.name + ".dvc")
    if pointer.is_file():
        # Fetched (or added) on another machine: the bytes are in the DVC remote, not yet here.
        hint = f"DVC tracks it ({pointer.name}) but it is not in this workspace: run 'dvc pull {pointer}'"
    else:
        hint = (
            "Put the .pt file under the workspace (e.g. weights/) and give its path, or name a model YAML "
            "such as yolo11n.yaml; Ultralytics' released weights, fetched once by pinned hash: "
            "make weights MODEL=yolo11n (python -m stages.data.weights fetch yolo11n)"
        )
    raise ConfigError(
        f"{model!r} is not a local file; weights are never downloaded at run time. {hint}", key="train.model"
    )


def prepared_data_hash(workspace: Path, prepared: Path) -> str | None:
    """DVC's hash of the prepared dataset from ``dvc.lock`` (written when ``prepare`` ran), or ``None``."""
    relative = prepared.relative_to(workspace).as_posix()
    outs = dvc_lock_stage(workspace, "prepare").get("outs", [])
    return next((o.get("md5") for o in outs if o.get("path") == relative), None)


def run_fingerprint(hyper: TrainParams, workspace: Path, prepared: Path) -> str:
    """What makes a training run the same run: what is trained (not how nodes wait) and the exact data.

    The data is DVC's hash from ``dvc.lock`` when ``prepare`` ran under DVC, else the content hash of
    the prepared files: the same data always gives the same run folder, so a run outside DVC resumes too.
    """
    data = prepared_data_hash(workspace, prepared) or "content:" + node_facts.data_hash(prepared, workspace)
    payload = {"hyper": hyper.training_identity(), "data": data}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def backend(hyper: TrainParams) -> str:
    """The process-group backend: ``auto`` is NCCL for CUDA devices and gloo for the CPU.

    Raises:
        ConfigError: NCCL asked for CPU training (NCCL runs only between GPUs).
    """
    cuda = hyper.device not in {"cpu", "mps"}
    chosen = hyper.distributed.backend
    if chosen == "auto":
        return "nccl" if cuda else "gloo"
    if chosen == "nccl" and not cuda:
        raise ConfigError(
            "backend nccl needs CUDA devices; use gloo (or auto) for CPU training", key="train.distributed.backend"
        )
    return chosen


def trainer_settings(hyper: TrainParams) -> TrainerSettings:
    """What the pipeline's trainer adds to Ultralytics' arguments, from ``params.yaml``."""
    return TrainerSettings(
        lr_scaling=hyper.lr_scaling,
        base_batch=hyper.base_batch,
        configured_lr0=hyper.lr0,
        sync_bn=hyper.sync_bn,
        backend=backend(hyper),
        collective_timeout_s=hyper.distributed.collective_timeout_s,
        nnodes=hyper.distributed.nnodes,
        nproc_per_node=hyper.distributed.nproc_per_node,
    )


def write_spec(spec: LaunchSpec, run_dir: Path) -> Path:
    """Write ``spec`` into the run folder (atomically) and return its path."""
    path = run_dir / SPEC
    write_json(path, spec)
    return path


def read_spec(path: Path) -> LaunchSpec:
    """The spec a launched process was started with.

    Raises:
        ConfigError: When the file is missing or is not a spec.
    """
    try:
        return LaunchSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the launch spec: {exc}", path=path) from None


def checkpoint_epochs(path: Path) -> int | None:
    """Epochs an Ultralytics checkpoint has completed, or ``None`` when the file cannot be read whole.

    Loaded with Ultralytics' safe loading (``stages.core.runtime.load_checkpoint``), as every checkpoint
    is: the run folder may be shared between nodes, and a resume loads the file anyway.

    Its ``epoch`` is 0-based, and -1 once the run finished (the optimizer stripped).

    Raises:
        UnsafeCheckpoint: When the file names something outside Ultralytics' allow-list (never run).
    """
    from stages.core.runtime import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except (TypeError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        # A zip archive cut short ("PytorchStreamReader failed reading zip archive") or an empty file:
        # Ultralytics reports those as a TypeError ("not a loadable checkpoint").
        log.warning("checkpoint %s cannot be read (%s: %s)", path, type(exc).__name__, str(exc).splitlines()[0])
        return None
    return int(ckpt.get("epoch", -1)) + 1 if isinstance(ckpt, dict) else None


def resume_point(run_dir: Path, fingerprint: str, epochs: int) -> tuple[Path, int] | None:
    """The newest readable checkpoint of an interrupted run of the same configuration, and its epochs.

    A run is resumed only when it was started with the same fingerprint, saved a checkpoint that can
    be read whole, and completed fewer epochs than configured (Ultralytics then trains exactly the
    remaining ones). ``last.pt`` is tried first, then ``last.prev.pt``. Rows that ``results.csv`` (and
    the epoch statistics) hold beyond the checkpoint are dropped, since those epochs run again.

    Returns:
        ``(checkpoint, completed epochs)``, or ``None`` for a fresh start. A checkpoint that cannot be read
    is removed.
    """
    candidates = (run_dir / "weights" / "last.pt", run_dir / "weights" / PREVIOUS)
    return _resume_point(run_dir, fingerprint, epochs, candidates, checkpoint_epochs)


def lightning_resume_point(run_dir: Path, fingerprint: str, epochs: int) -> tuple[Path, int] | None:
    """:func:`resume_point` for the Lightning backend: its ``lightning/last.ckpt`` and the epochs it holds."""
    from stages.training.lightning import checkpoint

    return _resume_point(run_dir, fingerprint, epochs, (checkpoint.last_checkpoint(run_dir),), checkpoint.epochs_done)


def _resume_point(
    run_dir: Path,
    fingerprint: str,
    epochs: int,
    candidates: tuple[Path, ...],
    read_epochs: Callable[[Path], int | None],
) -> tuple[Path, int] | None:
    """The rules of both backends: the same fingerprint, the first candidate read whole, fewer epochs done."""
    marker = run_dir / FINGERPRINT
    results = run_dir / "results.csv"
    if not (marker.is_file() and results.is_file()):
        return None
    if json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
        return None
    for candidate in candidates:
        if not candidate.is_file():
            continue
        done = read_epochs(candidate)
        if done is None:
            # Gone, so that the next save does not keep this one as the previous checkpoint.
            candidate.unlink()
            continue
        if not 0 < done < epochs:
            return None
        _drop_rows_after(results, done)
        return candidate, done
    return None


def run_resume_point(run_dir: Path, fingerprint: str, hyper: TrainParams) -> tuple[Path, int] | None:
    """The resume point of the run's backend (``train.backend``)."""
    if hyper.backend == "lightning":
        return lightning_resume_point(run_dir, fingerprint, hyper.epochs)
    return resume_point(run_dir, fingerprint, hyper.epochs)


def backend_fit(hyper: TrainParams) -> Callable[..., Any]:
    """The ``fit`` of the run's backend (``train.backend``): ``stages.training.lightning.fit.fit`` or
    ``stages.training.trainer.fit``, same arguments. Imported here, after Ultralytics is set up offline."""
    if hyper.backend == "lightning":
        from stages.training.lightning.fit import fit as lightning_fit

        return lightning_fit
    from stages.training.trainer import fit

    return fit


def clear_checkpoints(run_dir: Path) -> None:
    """Remove a run folder's checkpoints and per-epoch record before it trains from the start.

    What a fresh start leaves of an earlier attempt would otherwise become ``last.prev.pt`` at the first
    save, and a later fall-back could resume another attempt's weights.
    """
    import shutil

    shutil.rmtree(run_dir / "weights", ignore_errors=True)
    from stages.training.lightning.checkpoint import FOLDER

    shutil.rmtree(run_dir / FOLDER, ignore_errors=True)  # the Lightning backend's checkpoint and logs
    for name in ("results.csv", "epoch_stats.csv"):
        (run_dir / name).unlink(missing_ok=True)


def _drop_rows_after(csv_file: Path, done: int) -> None:
    lines = csv_file.read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if int(float(line.split(",")[0])) <= done]
    write_text(csv_file, "\n".join(kept) + "\n")


def start_run_dir(run_dir: Path, fingerprint: str) -> None:
    """An empty run folder marked with ``fingerprint`` (whatever was there is another run's)."""
    import shutil

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_json(run_dir / FINGERPRINT, {"fingerprint": fingerprint})


def record_start(run_dir: Path, restart: int, resumed_after: int | None) -> None:
    """Append one start of global rank 0 to the run folder's record (read back by the stage)."""
    with (run_dir / STARTS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"restart": restart, "resumed_after": resumed_after}) + "\n")


def read_starts(run_dir: Path) -> list[dict[str, Any]]:
    """Every start recorded by :func:`record_start`, oldest first."""
    path = run_dir / STARTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_label_caches(data_yaml: Path, imgsz: int) -> None:
    """Build Ultralytics' label caches once, so launched processes on a shared disk only read them."""
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    for split in ("train", "val"):
        YOLODataset(img_path=data[split], imgsz=imgsz, augment=False, data=data, task="detect")
