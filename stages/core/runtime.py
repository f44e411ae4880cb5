"""Run Ultralytics offline and quietly, configured by the project rather than the user's global files.

Ultralytics reads its settings and looks for fonts in ``YOLO_CONFIG_DIR`` at import time, asks the
network for fonts while checking a dataset, and downloads ``yolo26n.pt`` for its AMP check on CUDA.
``YOLO_OFFLINE=true`` stops only some of this. :func:`import_ultralytics` points Ultralytics at a
project-local settings folder with telemetry and integrations off and with fonts already in place, and
:func:`offline_amp_check` replaces the downloading AMP check by the same comparison on the model being
trained (``stages.training.trainer.PipelineTrainer`` applies it, in every launched process too). The user's own
``~/.config/Ultralytics`` is never read or written. Every launched training process imports Ultralytics
at once and the nodes may share the workspace, so one process at a time imports it and writes there
(a lock file in the folder), and fonts arrive whole (written aside, then renamed).

Checkpoints are loaded with Ultralytics' safe loading (``ULTRALYTICS_SAFE_LOAD``: ``torch.load`` with
``weights_only=True`` against its allow-list of model classes), in every process that imports it here:
``models/best.pt`` and production come from the DVC remote, and an ordinary unpickle of a file from
there would run whatever code its author put in it. :func:`load_checkpoint` is that load for the
pipeline's own reads of a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from stages.core.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

# Ultralytics looks these names up before it considers downloading them.
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")

_SETTINGS_OFF = {
    "sync": False,
    "hub": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"


class UnsafeCheckpoint(PipelineError):
    """A checkpoint refused by the safe loading: it names something outside Ultralytics' allow-list."""


def ultralytics_config_dir(workspace: Path) -> Path:
    """The project-local folder that holds Ultralytics' settings, fonts and caches."""
    return workspace / ".cache" / "ultralytics"


def offline_environment(workspace: Path) -> dict[str, str]:
    """Environment variables that keep Ultralytics and its dependencies off the network."""
    return {
        "YOLO_CONFIG_DIR": str(ultralytics_config_dir(workspace)),
        "YOLO_OFFLINE": "true",
        "YOLO_AUTOINSTALL": "false",
        "MPLBACKEND": "Agg",
        "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime's usage telemetry (stages/__init__.py)
        SAFE_LOAD_ENV: "1",  # weights_only checkpoint loads, inherited by every process started from here
    }


def _place_fonts(config_dir: Path) -> list[str]:
    """Put a local font under the names Ultralytics would otherwise try to download.

    The font only labels plots; matplotlib's bundled DejaVu Sans covers the glyphs of both names. Each
    copy is written beside its name and renamed onto it, so no process ever finds half a font there; a
    font of the wrong size (cut short by an older, non-atomic copy) is replaced.

    Returns:
        The names placed by this call (none when every font was already there).
    """
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    size = source.stat().st_size
    placed = []
    for name in _FONT_NAMES:
        target = config_dir / name
        if target.is_file() and target.stat().st_size == size:
            continue
        partial = config_dir / f".{name}.{os.getpid()}.partial"
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        placed.append(name)
    return placed


@contextlib.contextmanager
def _one_writer(config_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``config_dir/.lock`` (every process of a workspace, on every node sharing it).

    Launched training processes (every local rank of every node) all import Ultralytics at once, and its
    import writes ``settings.json`` in place when it finds none or one it cannot parse, which is what a
    reader sees while another process writes. Under the lock, the first process writes and the others
    read a complete file. Where the filesystem offers no locks, the processes go on unlocked, as before.
    """
    import fcntl

    with (config_dir / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            locked = True
        except OSError as error:  # e.g. a network filesystem mounted without locks
            log.warning("no lock on %s (%s): Ultralytics' settings are written unlocked", fh.name, error.strerror)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fh, fcntl.LOCK_UN)


def import_ultralytics(workspace: Path) -> ModuleType:
    """Import Ultralytics configured for offline, project-local use.

    One process at a time imports it and writes the settings and fonts (concurrent training processes
    share the folder).

    Args:
        workspace: The workspace root; settings live in ``<workspace>/.cache/ultralytics``.

    Returns:
        The ``ultralytics`` module.
    """
    config_dir = ultralytics_config_dir(workspace)
    config_dir.mkdir(parents=True, exist_ok=True)
    if "ultralytics" in sys.modules:
        current = os.environ.get("YOLO_CONFIG_DIR")
        if current != str(config_dir):
            log.debug("ultralytics already imported with YOLO_CONFIG_DIR=%s; keeping it", current)
    else:
        os.environ.update(offline_environment(workspace))
    # Also when Ultralytics is already imported (its flag was read then): the processes it starts
    # inherit the variable, and this one gets the flag set below.
    os.environ[SAFE_LOAD_ENV] = "1"

    with _one_writer(config_dir):
        import ultralytics
        from ultralytics.nn import tasks
        from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

        _require_safe_load(tasks)

        for name in _place_fonts(Path(USER_CONFIG_DIR)):
            log.debug("placed font %s in %s", name, USER_CONFIG_DIR)

        wanted: dict[str, Any] = {k: v for k, v in _SETTINGS_OFF.items() if k in SETTINGS}
        wanted.update(
            datasets_dir=str(config_dir / "datasets"),
            weights_dir=str(config_dir / "weights"),
            runs_dir=str(config_dir / "runs"),
        )
        if any(SETTINGS.get(k) != v for k, v in wanted.items()):
            SETTINGS.update(wanted)
            log.debug("wrote Ultralytics settings %s", SETTINGS.file)
    return ultralytics


def _require_safe_load(tasks: ModuleType) -> None:
    """Turn on Ultralytics' safe loading in this process, whatever the environment was at its import.

    Ultralytics reads ``ULTRALYTICS_SAFE_LOAD`` once, into ``ultralytics.utils.SAFE_LOAD`` and the copy
    ``ultralytics.nn.tasks`` imported; every model load (``YOLO(path)``, a trainer's weights, a resume)
    goes through ``tasks.torch_safe_load``, which reads the latter.

    Raises:
        ConfigError: When this Ultralytics or torch cannot load safely (torch older than 2.6, or an
            Ultralytics without the flag): the pipeline refuses to unpickle checkpoints unchecked.
    """
    import ultralytics
    import ultralytics.utils

    if not hasattr(tasks, "SAFE_LOAD") or not getattr(getattr(tasks, "_SafeLoad", None), "SUPPORTED", False):
        raise ConfigError(
            f"Ultralytics {ultralytics.__version__} with torch {ultralytics.utils.TORCH_VERSION} cannot load "
            "checkpoints with weights_only=True (ULTRALYTICS_SAFE_LOAD needs torch >= 2.6); refusing to unpickle "
            "model files unchecked"
        )
    ultralytics.utils.SAFE_LOAD = True
    tasks.SAFE_LOAD = True


def load_checkpoint(path: Path) -> Any:
    """An Ultralytics checkpoint loaded safely: ``weights_only=True`` against Ultralytics' allow-list.

    Ultralytics must have been imported through :func:`import_ultralytics`.

    Args:
        path: The ``.pt`` file.

    Returns:
        What the file holds (a checkpoint dict for Ultralytics' own files).

    Raises:
        UnsafeCheckpoint: When the file names a function or class outside the allow-list (a crafted
            pickle, or a format this Ultralytics does not know); nothing of it was run.
        TypeError: When the file is empty, cut short or no checkpoint at all (Ultralytics' message).
    """
    import pickle

    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except TypeError as exc:
        if isinstance(exc.__cause__, pickle.UnpicklingError) and "Weights only load failed" in str(exc.__cause__):
            raise UnsafeCheckpoint(
                f"refused to load: it names something outside Ultralytics' allow-list of checkpoint contents "
                f"({_unsupported_global(str(exc.__cause__))}); a file from someone else could run code when "
                "unpickled. Delete it, or replace it with a checkpoint trained by this pipeline",
                path=path,
            ) from None
        raise
    return ckpt


def _unsupported_global(message: str) -> str:
    """The global torch's weights_only unpickler refused, from its message (or the message's first line)."""
    # torch words it "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL x.y whose
    # module x is blocked"; its advice to retry with weights_only=False is left out on purpose.
    for line in message.splitlines():
        if "unsupported global" in line.casefold() or "unsupported operand" in line.casefold():
            return line.strip().removeprefix("WeightsUnpickler error: ").rstrip(".")
    return "a global torch's weights_only loading does not accept"


def _amp_outputs_close(model: Any) -> bool:
    """Compare FP32 and autocast outputs of ``model`` on one batch; the check Ultralytics runs, offline."""
    import copy

    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False  # Ultralytics uses AMP on accelerators only
    probe = copy.deepcopy(model).eval()
    x = torch.rand(2, 3, 256, 256, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        full = probe(x)
        with torch.autocast("cuda", enabled=True):
            mixed = probe(x)
    full_t = full[0] if isinstance(full, (tuple, list)) else full
    mixed_t = mixed[0] if isinstance(mixed, (tuple, list)) else mixed
    if isinstance(full_t, dict):  # end-to-end heads return a dict of tensors
        full_t, mixed_t = next(iter(full_t.values())), next(iter(mixed_t.values()))
    ok = bool(torch.allclose(full_t.float(), mixed_t.float(), atol=0.5, rtol=0.05))
    log.info("AMP check on the training model: %s", "passed" if ok else "failed, AMP disabled")
    return ok


@contextlib.contextmanager
def offline_amp_check() -> Iterator[None]:
    """While active, Ultralytics' trainer runs :func:`_amp_outputs_close` instead of its downloading check."""
    from ultralytics.engine import trainer

    original = trainer.check_amp
    trainer.check_amp = _amp_outputs_close
    try:
        yield
    finally:
        trainer.check_amp = original


@contextlib.contextmanager
def image_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Refuse, in this process, to open images with more than ``max_pixels`` pixels.

    The one place the limit (``validate.max_image_pixels``) reaches the image libraries, so training
    refuses what validation refuses. PIL checks the size from the header when an image is opened and
    only warns between its limit and twice it; the warning becomes an error here, so the limit is
    exact (Ultralytics then drops the image as corrupt while it scans the dataset). OpenCV reads its
    own limit from the environment when it is loaded, so that one applies only where OpenCV is loaded
    inside this block (the stages import Ultralytics, and with it OpenCV, lazily for this reason) and
    in processes started from it. The previous limits are back when the block ends.
    """
    import warnings

    from PIL import Image

    saved_pixels, saved_env = Image.MAX_IMAGE_PIXELS, os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
    if "cv2" in sys.modules:
        log.debug("OpenCV is already loaded: its own pixel limit stays as it was")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved_pixels
            if saved_env is None:
                os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
            else:
                os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = saved_env
