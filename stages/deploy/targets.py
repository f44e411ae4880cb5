"""The deploy targets: what file each is, which backend opens it, and in which precision."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from stages.backends.base import Precision

ENGINE_NAME = "model.engine"  # the TensorRT engine's file in build_engine's engine_dir; benchmark times it from there


class Target(BaseModel):
    """One deployable artifact kind (``file`` may lie in a folder of its own, with files beside it)."""

    model_config = ConfigDict(frozen=True)

    name: str
    file: str  # in the deploy folder
    backend: str  # a key of stages.backends.BACKENDS
    precision: Precision

    def files(self, deploy_dir: Path) -> list[Path]:
        """Every file of this artifact in ``deploy_dir`` (an OpenVINO IR is an .xml and a .bin)."""
        path = deploy_dir / self.file
        if path.parent != deploy_dir:
            return sorted(p for p in path.parent.iterdir() if p.is_file()) if path.parent.is_dir() else []
        return [path] if path.is_file() else []

    def remove(self, deploy_dir: Path) -> None:
        """Delete this artifact from ``deploy_dir``."""
        path = deploy_dir / self.file
        if path.parent != deploy_dir:
            shutil.rmtree(path.parent, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def size_mb(self, deploy_dir: Path) -> float:
        """The artifact's size on disk, all its files."""
        return round(sum(p.stat().st_size for p in self.files(deploy_dir)) / 1e6, 3)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="onnx-fp32",
            file="model.onnx",
            backend="onnxruntime",
            precision="fp32",
        ),
        Target(
            name="onnx-int8",
            file="model.int8.onnx",
            backend="onnxruntime",
            precision="int8",
        ),
        Target(
            name="openvino-fp32",
            file="openvino-fp32/model.xml",
            backend="openvino",
            precision="fp32",
        ),
        Target(
            name="openvino-int8",
            file="openvino-int8/model.xml",
            backend="openvino",
            precision="int8",
        ),
        Target(
            name="torchscript-fp32",
            file="model.torchscript",
            backend="torchscript",
            precision="fp32",
        ),
    )
}
