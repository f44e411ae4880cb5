"""The machine fingerprint: the hardware and libraries that engine and benchmark results depend on.

A TensorRT engine is only valid for the GPU and TensorRT version it was built with, and latencies
only mean something for the machine they were measured on. The ``environment`` stage
(:mod:`stages.environment`) runs on every ``dvc repro`` and calls :func:`run` when its cheap machine
key changed. The output holds no timestamps, so it changes only when the machine or a library does,
and only then do ``build_engine`` and ``benchmark`` run again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from stages.core.common import write_json
from stages.core.config import Params

log = logging.getLogger(__name__)

PACKAGES = (
    "torch",
    "torchvision",
    "ultralytics",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "openvino",
    "nncf",
    "numpy",
)


class EnvironmentConfig(BaseModel):
    """Where to write the fingerprint."""

    model_config = ConfigDict(frozen=True)

    output: Path

    @classmethod
    def from_params(cls, params: Params, root: Path) -> EnvironmentConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(output=params.paths.resolve("environment", root))


class Gpu(BaseModel):
    """One GPU as ``nvidia-smi`` reports it."""

    name: str
    driver: str
    memory: str


class EnvironmentResult(BaseModel):
    """The fingerprint."""

    python: str
    system: str
    machine: str
    cpu: str
    cpu_count: int
    cpu_int8: list[str]  # the CPU's integer dot-product extensions (INT8 convolutions are fast with them)
    cuda_visible_devices: str | None
    gpus: list[Gpu]
    packages: dict[str, str | None]


def cpu_model() -> str:
    """The CPU model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# CPU flags (as /proc/cpuinfo names them) of the instructions that make INT8 convolutions fast.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_flags() -> list[str]:
    """This CPU's flags as ``/proc/cpuinfo`` names them (x86 ``flags``, ARM ``Features``); empty where unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.lower().startswith(("flags", "features")):
            return line.split(":", 1)[1].split()
    return []


def int8_extensions(flags: Iterable[str]) -> list[str]:
    """Which of :data:`INT8_FLAGS` are among ``flags``, in that order."""
    present = set(flags)
    return [flag for flag in INT8_FLAGS if flag in present]


def cpu_int8_extensions() -> list[str]:
    """Which of :data:`INT8_FLAGS` this CPU has (Linux; empty where unknown)."""
    return int8_extensions(cpu_flags())


def list_gpus() -> list[Gpu]:
    """NVIDIA GPUs visible to the driver; empty when there is no ``nvidia-smi`` or no GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        # A broken driver is worth a warning, not a failure: the fingerprint then says "no GPU".
        log.warning("nvidia-smi failed (%s); recording no GPU", exc)
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(",", 2))
        gpus.append(Gpu(name=name, driver=driver, memory=memory))
    return gpus


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(cfg: EnvironmentConfig) -> EnvironmentResult:
    """Write the fingerprint of this machine.

    Args:
        cfg: Where to write it.

    Returns:
        The fingerprint.
    """
    result = EnvironmentResult(
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release().split('-')[0]}",
        machine=platform.machine(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        cpu_int8=cpu_int8_extensions(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpus=list_gpus(),
        packages={name: package_version(name) for name in PACKAGES},
    )
    write_json(cfg.output, result)
    log.info("%s, %d cores, %d GPU(s)", result.cpu, result.cpu_count, len(result.gpus))
    return result
