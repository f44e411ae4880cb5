"""Shared fixtures and helpers for all test tiers."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "datasets" / "coco128"

# Found, not imported: importing Lightning (and torchmetrics with it) costs every xdist worker about
# 2.5 CPU-s while it collects, whether or not it runs a Lightning test.
needs_lightning = pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None,
    reason="Lightning is not installed (pip install 'yolo-pipeline[lightning]')",
)


def openvino_missing() -> str | None:
    """Why the OpenVINO tests cannot run here (OpenVINO or NNCF not installed), or ``None``.

    Found, not imported: it runs while every xdist worker collects (importing both costs 0.5 CPU-s).
    """
    missing = [name for name in ("nncf", "openvino") if importlib.util.find_spec(name) is None]
    if missing:
        return f"OpenVINO or NNCF is not installed (no {', '.join(missing)}); the 'openvino' extra brings them"
    return None


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), links followed."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network through Ultralytics or Prefect analytics."""
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "false")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def coco128() -> Path:
    """The real COCO subset beside the repo; the test is skipped where it is absent."""
    if not (COCO128 / "data.yaml").is_file():
        pytest.skip(f"real dataset not present at {COCO128} (exists only on the project's build machines)")
    return COCO128


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def venv_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin folder first on PATH, one OpenMP/BLAS thread.

    One thread, unless the caller's environment says otherwise: the suite runs two xdist workers on
    two cores, and a stage's PyTorch, started with a thread per core, then spins waiting for threads
    the other worker's processes hold. What chooses its own threads still does: the benchmark
    (``benchmark.threads``) and ONNX Runtime's sessions; torchrun gives its workers one anyway.
    """
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


def tiny_training_workspace(root: Path) -> tuple[Path, Path]:
    """``root`` with Ultralytics set up offline and a tiny detection dataset (8 train, 4 val images at 64 px).

    Returns:
        The workspace root and the dataset's ``data.yaml``.
    """
    from stages.core.runtime import import_ultralytics
    from stages.data.sample_data import SampleSpec, generate

    import_ultralytics(root)
    generate(SampleSpec(out=root / "data", train=8, val=4, size=64, seed=0))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root / 'data'}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n")
    return root, data_yaml


def built_once(tmp_path_factory: pytest.TempPathFactory, key: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build`` fills, built once per test run and shared by the xdist workers.

    Under pytest-xdist every worker's temporary folder lies in the run's own folder; the first worker
    that asks builds there, under a file lock, and the others wait for it and reuse what it built.
    ``key`` names what is built (a new key for other inputs); nothing outlives the run's folder.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / key
    folder.mkdir(exist_ok=True)
    built = folder / "built"
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if not (folder / "ready").is_file():
            shutil.rmtree(built, ignore_errors=True)  # what a failed build left
            built.mkdir()
            build(built)
            (folder / "ready").touch()
    return built


def tiny_yolo_export(tmp_path_factory: pytest.TempPathFactory, name: str, imgsz: int) -> dict[str, Path]:
    """An untrained YOLO11n checkpoint and its FP32 ONNX export at ``imgsz`` px in a new folder ``name``
    (no training, no download): ``{"root", "pt", "onnx"}``.

    Built once per test run (:func:`built_once`, 4.4 CPU-s; six modules ask for it) and copied.
    """

    def build(folder: Path) -> None:
        from stages.core.runtime import import_ultralytics

        ultralytics = import_ultralytics(folder)
        checkpoint = folder / "model.pt"
        ultralytics.YOLO("yolo11n.yaml", task="detect").save(str(checkpoint))
        exported = ultralytics.YOLO(str(checkpoint), task="detect").export(
            format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False, batch=1, device="cpu", verbose=False
        )
        assert Path(exported) == folder / "model.onnx", exported

    built = built_once(tmp_path_factory, f"tiny-yolo-export-{imgsz}", build)
    root = tmp_path_factory.mktemp(name)
    for file in ("model.pt", "model.onnx"):
        shutil.copyfile(built / file, root / file)
    return {"root": root, "pt": root / "model.pt", "onnx": root / "model.onnx"}


def smooth_images(count: int, imgsz: int, seed: int = 0):
    """Letterbox-like inputs: smooth random images in [0, 1], ``(count, 3, imgsz, imgsz)`` float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 3, imgsz // 8, imgsz // 8), dtype=np.float32)
    return np.ascontiguousarray(coarse.repeat(8, axis=2).repeat(8, axis=3))


def deploy_inputs(tiny: dict[str, Path], tmp_path: Path, deploy_dir: Path, imgsz: int, params: dict, **extra):
    """``stages.deploy.build.DeployInputs`` for a tiny export: files under ``tmp_path``, ``params`` parsed."""
    from stages.core.config import parse_params
    from stages.deploy.build import DeployInputs

    return DeployInputs(
        model=tiny["pt"],
        deploy_dir=deploy_dir,
        data_yaml=tmp_path / "data.yaml",
        metrics=tmp_path / "metrics" / "deploy.json",
        report=tmp_path / "reports" / "deploy.json",
        workspace=tiny["root"],
        imgsz=imgsz,
        conf=0.001,
        iou=0.7,
        options=parse_params(params).deploy,
        **extra,
    )
