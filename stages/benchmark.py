"""Stage ``benchmark``: latency percentiles and throughput of the model on every backend measured here.

Every backend gets the same letterboxed validation images. Each timed iteration is one forward pass
of one batch, input already in the backend's memory where the backend allows (PyTorch and TensorRT on
CUDA; ONNX Runtime copies from and to the host inside ``run``, which is included). CUDA work is
synchronised before the clock stops. The execution provider actually used is recorded, never assumed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.common import read_json, stage_main, write_json
from stages.config import BenchmarkParams, Params
from stages.errors import BackendUnavailable, ConfigError, PipelineError
from stages.inference import (
    batches,
    load_inputs,
    onnx_input_batch,
    onnx_session,
    torch_model,
    validation_images,
)

log = logging.getLogger(__name__)

STAGE = "benchmark"
GPU_BACKENDS = ("onnxruntime-cuda", "pytorch-cuda", "tensorrt")


class BenchmarkConfig(BaseModel):
    """Inputs, outputs and options of ``benchmark``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    onnx: Path
    export_metrics: Path
    engine_dir: Path
    engine_metrics: Path
    data_yaml: Path
    metrics: Path
    workspace: Path
    imgsz: int
    options: BenchmarkParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> BenchmarkConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        paths = params.paths
        return cls(
            model=paths.resolve("model", root),
            onnx=paths.onnx_model(root),
            export_metrics=paths.resolve("export_metrics", root),
            engine_dir=paths.resolve("engine_dir", root),
            engine_metrics=paths.resolve("engine_metrics", root),
            data_yaml=paths.resolve("prepared", root) / "data.yaml",
            metrics=paths.resolve("benchmark_metrics", root),
            workspace=root,
            imgsz=params.train.imgsz,
            options=params.benchmark,
        )


class Latency(BaseModel):
    """Latency statistics of one batch forward pass, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float


class BenchmarkRow(BaseModel):
    """One backend's measurement."""

    backend: str
    provider: str
    device: str
    precision: str
    batch: int
    imgsz: int
    threads: int | None
    iterations: int
    warmup: int
    latency_ms: Latency
    throughput_ips: float


class BenchmarkResult(BaseModel):
    """What ``metrics/benchmark.json`` holds: one row per backend measured, keyed by backend.

    A mapping rather than a list so that ``dvc metrics show/diff`` can flatten and compare it.
    """

    backends: dict[str, BenchmarkRow]
    skipped: dict[str, str]


def summarise(samples_ms: list[float]) -> Latency:
    """Percentiles, mean and spread of latency samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Latency(
        p50=round(float(p50), 4),
        p90=round(float(p90), 4),
        p99=round(float(p99), 4),
        mean=round(float(a.mean()), 4),
        std=round(float(a.std()), 4),
        min=round(float(a.min()), 4),
        max=round(float(a.max()), 4),
    )


def time_calls(step: Callable[[int], Any], iterations: int, warmup: int) -> list[float]:
    """Call ``step(i)`` ``warmup`` times untimed, then ``iterations`` times timed; milliseconds per call."""
    for i in range(warmup):
        step(i)
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


class _Backend(BaseModel):
    """A ready-to-time backend: a step function and what to record about it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    provider: str
    device: str
    precision: str
    threads: int | None
    step: Callable[[int], Any]


def _onnxruntime(cfg: BenchmarkConfig, inputs: list[np.ndarray], provider: str) -> _Backend:
    session = onnx_session(cfg.onnx, provider, cfg.options.threads)
    name = session.get_inputs()[0].name
    device = "cpu" if provider == "CPUExecutionProvider" else "cuda:0"
    return _Backend(
        provider=session.get_providers()[0],
        device=device,
        precision="fp32",
        threads=cfg.options.threads or None,
        step=lambda i: session.run(None, {name: inputs[i % len(inputs)]}),
    )


def _pytorch(cfg: BenchmarkConfig, inputs: list[np.ndarray], device: str) -> _Backend:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("PyTorch sees no CUDA GPU")
    if device == "cpu" and cfg.options.threads:
        torch.set_num_threads(cfg.options.threads)
    # Conv+BatchNorm fused, as Ultralytics does for inference and as the ONNX export is.
    model = torch_model(cfg.model, cfg.workspace, device).fuse(verbose=False)
    tensors = [torch.from_numpy(x).to(device) for x in inputs]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(i: int) -> None:
        with torch.inference_mode():
            model(tensors[i % len(tensors)])
        sync()

    return _Backend(
        provider=f"torch {torch.__version__} ({'CUDA' if device == 'cuda' else 'CPU'})",
        device=device if device == "cpu" else f"cuda:0 {torch.cuda.get_device_name(0)}",
        precision="fp32",
        threads=torch.get_num_threads() if device == "cpu" else None,
        step=step,
    )


def _tensorrt(cfg: BenchmarkConfig, inputs: list[np.ndarray]) -> _Backend:
    engine_info = read_json(cfg.engine_metrics, stage=STAGE)
    if engine_info.get("status") != "built":
        raise BackendUnavailable(f"no TensorRT engine: {engine_info.get('reason')}")
    import torch

    from stages.runtime import import_ultralytics

    import_ultralytics(cfg.workspace)
    from ultralytics.nn.autobackend import AutoBackend

    engine = cfg.engine_dir / "model.engine"
    backend = AutoBackend(str(engine), device=torch.device("cuda:0"), fp16=engine_info["precision"] == "fp16")
    tensors = [torch.from_numpy(x).to("cuda:0") for x in inputs]
    if getattr(backend, "fp16", False):
        tensors = [t.half() for t in tensors]

    def step(i: int) -> None:
        backend(tensors[i % len(tensors)])
        torch.cuda.synchronize()

    return _Backend(
        provider=f"TensorRT {engine_info.get('tensorrt')}",
        device=f"cuda:0 {torch.cuda.get_device_name(0)}",
        precision=engine_info["precision"],
        threads=None,
        step=step,
    )


def _gpu_available(backend: str, cfg: BenchmarkConfig) -> bool:
    """Whether an optional GPU backend can run here (checked cheaply, without failing)."""
    import torch

    if not torch.cuda.is_available():
        return False
    if backend == "pytorch-cuda":
        return True
    if backend == "onnxruntime-cuda":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    if backend == "tensorrt":
        return cfg.engine_metrics.is_file() and read_json(cfg.engine_metrics).get("status") == "built"
    return False


def _make(backend: str, cfg: BenchmarkConfig, inputs: list[np.ndarray]) -> _Backend:
    if backend == "onnxruntime-cpu":
        return _onnxruntime(cfg, inputs, "CPUExecutionProvider")
    if backend == "onnxruntime-cuda":
        return _onnxruntime(cfg, inputs, "CUDAExecutionProvider")
    if backend == "pytorch-cpu":
        return _pytorch(cfg, inputs, "cpu")
    if backend == "pytorch-cuda":
        return _pytorch(cfg, inputs, "cuda")
    if backend == "tensorrt":
        return _tensorrt(cfg, inputs)
    raise ConfigError(f"unknown backend {backend!r}", key="benchmark.backends")


def run(cfg: BenchmarkConfig) -> BenchmarkResult:
    """Measure every requested (and, with ``auto_gpu``, every available GPU) backend.

    Args:
        cfg: Paths and options.

    Returns:
        One row per backend measured, and why optional GPU backends were skipped.

    Raises:
        BackendUnavailable: When a backend named in ``benchmark.backends`` cannot run here.
        ConfigError: When the batch size does not fit the exported model.
    """
    o = cfg.options
    if not read_json(cfg.export_metrics, stage=STAGE).get("exported"):
        reason = "nothing was exported (the evaluation gate failed)"
        log.warning("nothing measured: %s", reason)
        result = BenchmarkResult(backends={}, skipped=dict.fromkeys(o.backends, reason))
        write_json(cfg.metrics, result)
        return result
    for path in (cfg.model, cfg.onnx):
        if not path.is_file():
            raise PipelineError("model file is missing; run the earlier stages first", stage=STAGE, path=path)
    static_batch = onnx_input_batch(onnx_session(cfg.onnx))
    if static_batch is not None and static_batch != o.batch:
        raise ConfigError(
            f"benchmark.batch={o.batch} but the ONNX model has a static batch of {static_batch} "
            "(set export.batch to match, or export.dynamic: true)",
            key="benchmark.batch",
        )
    images = validation_images(cfg.data_yaml, max(8, o.batch))
    inputs = batches(load_inputs(images, cfg.imgsz), o.batch)

    wanted = list(o.backends)
    skipped: dict[str, str] = {}
    if o.auto_gpu:
        for backend in GPU_BACKENDS:
            if backend in wanted:
                continue
            if _gpu_available(backend, cfg):
                wanted.append(backend)
            else:
                skipped[backend] = "not available on this machine"

    rows = []
    for backend in wanted:
        ready = _make(backend, cfg, inputs)
        samples = time_calls(ready.step, o.iterations, o.warmup)
        latency = summarise(samples)
        row = BenchmarkRow(
            backend=backend,
            provider=ready.provider,
            device=ready.device,
            precision=ready.precision,
            batch=o.batch,
            imgsz=cfg.imgsz,
            threads=ready.threads,
            iterations=o.iterations,
            warmup=o.warmup,
            latency_ms=latency,
            throughput_ips=round(o.batch * 1e3 / latency.mean, 2),
        )
        rows.append(row)
        log.info(
            "%-17s %-28s p50 %8.2f ms  p90 %8.2f ms  p99 %8.2f ms  %8.1f img/s",
            backend,
            ready.provider,
            latency.p50,
            latency.p90,
            latency.p99,
            row.throughput_ips,
        )
    result = BenchmarkResult(backends={row.backend: row for row in rows}, skipped=skipped)
    write_json(cfg.metrics, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BenchmarkConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
