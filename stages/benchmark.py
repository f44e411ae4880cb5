"""Stage ``benchmark``: latency percentiles and throughput of the model on every backend measured here.

Every backend is opened through ``stages.backends`` and gets the same letterboxed validation images.
Two figures per backend: ``model_ms``, one forward pass of one batch, and ``end_to_end_ms``, one
image as an application runs it (decode, letterbox, forward, NMS, without NMS's time limit).

``model_ms`` has one boundary for every backend (:data:`MODEL_MS_BOUNDARY`): the batch is already in
the runtime's memory before the clock starts (a CUDA tensor for PyTorch, an ``OrtValue`` bound
through ONNX Runtime's ``IOBinding`` on the session's device, TensorRT's device buffer; host memory
on the CPU), the outputs stay where the runtime wrote them, and CUDA work is synchronised before the
clock stops: no host-device copy is timed. What ran (provider, device, precision, threads) is read
back from the runtime; the process is pinned to the CPUs it records (:func:`pinned_cpus`).

The measurement states its noise: ``benchmark.rounds`` rounds, the backends interleaved within
each, so drift on the machine hits them all alike. Every round, every timed step (the forward pass,
end to end, each batch size of the throughput sweep) first runs ``benchmark.warmup`` untimed calls;
then the forward pass and end to end are timed ``benchmark.iterations`` times, each batch size
``benchmark.sweep_iterations`` times. Every percentile (p10, p50, p90, p99) is taken over every
timed call of every round, pooled (:func:`summarise`); ``cv`` is the spread of the round medians.
``stable: 0`` (and a warning) when ``cv`` exceeds 0.10 or the p50 is more than 3 times the fastest
call; ``metrics/deployment.json`` flags such a row beside its number (``stages.reporting.summary``). Deploy
artifacts that were not built or are not deployable are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends import Runner, open_runner
from stages.backends.base import Precision
from stages.backends.inference import (
    batches,
    cpu_threads,
    detections,
    letterbox,
    load_inputs,
    onnx_input_batch,
    read_rgb,
    validation_images,
)
from stages.core.common import read_json, stage_main, write_json
from stages.core.config import BenchmarkParams, Params
from stages.core.errors import BackendUnavailable, ConfigError, PipelineError
from stages.data.datasets import read_prepared_yaml
from stages.deploy.engine import ENGINE_NAME
from stages.deploy.targets import TARGETS
from stages.reporting import summary

log = logging.getLogger(__name__)

STAGE = "benchmark"
MODEL_MS_BOUNDARY = (
    "one forward pass of one batch already in the runtime's memory (CUDA rows: a device tensor, "
    "ONNX Runtime's IOBinding on the device, TensorRT's device buffer), outputs left there, "
    "CUDA synchronised before the clock stops; no host-device copy is timed"
)
PERCENTILES = "every percentile over every timed call of every round, pooled (numpy's linear interpolation)"
GPU_BACKENDS = ("onnxruntime-cuda", "pytorch-cuda", "pytorch-cuda-graph", "pytorch-cuda-graph-fp32", "tensorrt")


class BenchmarkConfig(BaseModel):
    """Inputs, outputs and options of ``benchmark``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    onnx: Path
    deploy_dir: Path
    deploy_report: Path
    deploy_metrics: Path
    export_metrics: Path
    engine_dir: Path
    engine_metrics: Path
    engine_report: Path
    data_yaml: Path
    metrics: Path
    deployment: Path  # the numbers experiments are compared on (stages.reporting.summary)
    report: Path
    latency_plot: Path
    throughput_plot: Path
    workspace: Path
    imgsz: int
    engine_device: str  # engine.device: the GPU the engine was built and gated on
    options: BenchmarkParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> BenchmarkConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        paths = params.paths
        return cls(
            model=paths.resolve("model", root),
            onnx=paths.onnx_model(root),
            deploy_dir=paths.resolve("deploy_dir", root),
            deploy_report=paths.resolve("deploy_report", root),
            deploy_metrics=paths.resolve("deploy_metrics", root),
            export_metrics=paths.resolve("export_metrics", root),
            engine_dir=paths.resolve("engine_dir", root),
            engine_metrics=paths.resolve("engine_metrics", root),
            engine_report=paths.resolve("engine_report", root),
            data_yaml=paths.resolve("prepared", root) / "data.yaml",
            metrics=paths.resolve("benchmark_metrics", root),
            deployment=paths.resolve("deployment_metrics", root),
            report=paths.resolve("benchmark_report", root),
            latency_plot=paths.resolve("latency_plot", root),
            throughput_plot=paths.resolve("throughput_plot", root),
            workspace=root,
            imgsz=params.train.imgsz,
            engine_device=params.engine.device,
            options=params.benchmark,
        )


class Latency(BaseModel):
    """Latency of one batch forward pass, in milliseconds: every statistic over every timed call of every
    round, pooled (:data:`PERCENTILES`)."""

    p50: float
    p10: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float


class BenchmarkRow(BaseModel):
    """One backend's measurement (``stable``: 1, or 0 when the rounds disagree too much to trust)."""

    backend: str
    provider: str
    device: str
    precision: str
    batch: int
    imgsz: int
    threads: int | None
    iterations: int  # timed calls per round
    warmup: int  # untimed calls before each timed step, every round
    rounds: int
    sweep_iterations: int  # timed calls per batch size per round in the throughput sweep
    latency_ms: Latency
    model_ms: float  # the forward pass alone, input already in place: latency_ms.p50
    end_to_end_ms: float | None  # one image: decode, letterbox, forward, NMS (p50); None for a batch > 1 artifact
    round_p50_ms: list[float]
    cpus: list[int] | None  # the CPUs the measuring process was pinned to (None: no affinity API here)
    cv: float  # spread of the round p50s: standard deviation / mean
    stable: int
    throughput_ips: float  # at benchmark.batch
    throughput_ips_by_batch: dict[str, float]  # images/s per batch size the artifact takes: b / pooled p50 of its calls


class BenchmarkResult(BaseModel):
    """One row per backend measured, keyed by backend, and why the others were skipped.

    ``metrics/benchmark.json`` holds the numbers (a mapping rather than a list, so that ``dvc
    metrics show/diff`` and ``dvc exp show`` flatten and compare it); ``reports/benchmark.json`` the
    text: what ran (runtime, device, precision), the round p50s, and the reasons for skips.
    """

    backends: dict[str, BenchmarkRow]
    skipped: dict[str, str]

    TEXT: ClassVar[set[str]] = {"backend", "provider", "device", "precision", "round_p50_ms", "cpus"}

    def metrics_record(self) -> dict[str, Any]:
        return {"backends": {k: r.model_dump(exclude=self.TEXT, exclude_none=True) for k, r in self.backends.items()}}

    def report_record(self) -> dict[str, Any]:
        rows = {k: r.model_dump(include=self.TEXT - {"backend"}) for k, r in self.backends.items()}
        return {
            "backends": rows,
            "skipped": self.skipped,
            "unstable": sorted(k for k, r in self.backends.items() if not r.stable),
            "model_ms": MODEL_MS_BOUNDARY,
            "percentiles": PERCENTILES,
        }


MAX_CV = 0.10  # rounds whose p50s spread more than this are noise, not a measurement
MAX_P50_OVER_MIN = 3.0  # a p50 this far above the fastest call: the machine was busy


def summarise(samples_ms: list[float]) -> Latency:
    """Percentiles, mean and spread of latency samples.

    Every percentile has one definition: over ``samples_ms``, every timed call of every round pooled,
    with numpy's linear interpolation. (A median of round medians for p50 beside pooled tails would
    set p50 and p90 on different populations; the rounds' spread is :func:`stability`'s business.)
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    p10, p50, p90, p99 = np.percentile(a, [10, 50, 90, 99])
    return Latency(
        p50=round(float(p50), 4),
        p10=round(float(p10), 4),
        p90=round(float(p90), 4),
        p99=round(float(p99), 4),
        mean=round(float(a.mean()), 4),
        std=round(float(a.std()), 4),
        min=round(float(a.min()), 4),
        max=round(float(a.max()), 4),
    )


def stability(round_p50s: list[float], p50: float, fastest: float) -> tuple[float, bool]:
    """The rounds' coefficient of variation, and whether the measurement is stable enough to publish as is."""
    r = np.asarray(round_p50s, dtype=np.float64)
    cv = float(r.std() / r.mean()) if len(r) > 1 and r.mean() > 0 else 0.0
    return round(cv, 4), cv <= MAX_CV and p50 <= MAX_P50_OVER_MIN * fastest


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


class RowSpec(BaseModel):
    """A benchmark row: which backend opens which artifact on which device."""

    model_config = ConfigDict(frozen=True)

    backend: str  # a key of stages.backends.BACKENDS
    artifact: str  # "checkpoint", "engine", or a deploy target (stages.deploy.targets)
    device: str
    precision: Precision | None = "fp32"  # None: as built (the engine's)


ROWS: dict[str, RowSpec] = {
    "onnxruntime-cpu": RowSpec(backend="onnxruntime", artifact="onnx-fp32", device="cpu"),
    "onnxruntime-cpu-int8": RowSpec(backend="onnxruntime", artifact="onnx-int8", device="cpu", precision="int8"),
    "openvino-cpu": RowSpec(backend="openvino", artifact="openvino-fp32", device="cpu"),
    "openvino-cpu-int8": RowSpec(backend="openvino", artifact="openvino-int8", device="cpu", precision="int8"),
    "torchscript-cpu": RowSpec(backend="torchscript", artifact="torchscript-fp32", device="cpu"),
    "pytorch-cpu": RowSpec(backend="pytorch", artifact="checkpoint", device="cpu"),
    "onnxruntime-cuda": RowSpec(backend="onnxruntime", artifact="onnx-fp32", device="cuda"),
    "pytorch-cuda": RowSpec(backend="pytorch", artifact="checkpoint", device="cuda"),
    "pytorch-cuda-graph": RowSpec(backend="pytorch-cuda-graph", artifact="checkpoint", device="cuda", precision="fp16"),
    "pytorch-cuda-graph-fp32": RowSpec(backend="pytorch-cuda-graph", artifact="checkpoint", device="cuda"),
    "tensorrt": RowSpec(backend="tensorrt", artifact="engine", device="cuda", precision=None),
}
# The row that times the PyTorch checkpoint on the CPU: the reference, not a deploy artifact.
REFERENCE_ROW = "pytorch-cpu"


def summary_name(row: str) -> str:
    """A row's column in ``metrics/deployment.json``: the deploy artifact it opens on the CPU (a short,
    familiar name: ``onnx-int8``), else the row's own name (``tensorrt``, ``pytorch-cuda``)."""
    spec = ROWS.get(row)
    if spec is not None and spec.device == "cpu" and spec.artifact in TARGETS:
        return spec.artifact
    return row


def summary_latency(backends: dict[str, Any]) -> dict[str, float]:
    """The forward pass's p50 of every row but the CPU reference, by :func:`summary_name`."""
    return {
        summary_name(row): numbers["model_ms"]
        for row, numbers in backends.items()
        if row != REFERENCE_ROW and "model_ms" in numbers
    }


def summary_unstable(backends: dict[str, Any]) -> list[str]:
    """The rows of :func:`summary_latency` whose measurement was flagged ``stable: 0``, by summary name."""
    return sorted(
        summary_name(row)
        for row, numbers in backends.items()
        if row != REFERENCE_ROW and "model_ms" in numbers and numbers.get("stable") == 0
    )


def _tasks() -> list[int]:
    """The ids of this process's threads (Linux)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextlib.contextmanager
def pinned_cpus(threads: int) -> Iterator[list[int] | None]:
    """Pin every thread of this process to ``threads`` of the CPUs it may use (0: all of them), then restore.

    The lowest-numbered allowed CPUs are taken, so a rerun lands on the same cores. Threads that
    exist now are pinned one by one (an affinity is per thread on Linux); threads started inside
    (runtime thread pools created as runners open) inherit it. On leaving, every thread gets the
    process's former CPUs back.

    Yields:
        The CPU ids pinned to (recorded in each row), or ``None`` where the OS offers no affinity
        API (not Linux): then nothing is pinned and nothing is claimed.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    allowed = sorted(before)
    cpus = allowed[: min(cpu_threads(threads), len(allowed))]
    for tid in _tasks():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)
    try:
        yield cpus
    finally:
        for tid in _tasks():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


class _Timed:
    """A backend ready to time: its model step, its end-to-end step, a step per other batch size it takes."""

    def __init__(
        self, runner: Runner, pool: np.ndarray, images: list[Path], imgsz: int, names: int, o: BenchmarkParams
    ) -> None:
        self.runner = runner
        self.info = runner.info
        self.step = self._stepper(pool, o.batch)  # BackendUnavailable: the artifact does not take benchmark.batch
        self.end_to_end = None
        if takes(runner, pool, 1):
            self.end_to_end = lambda i: end_to_end(runner, images[i % len(images)], imgsz, names)
        # Throughput at the other batch sizes, where the artifact takes them (a static batch takes its own,
        # an engine its profile's range).
        self.batch_steps = {b: self._stepper(pool, b) for b in o.batch_sizes if b != o.batch and takes(runner, pool, b)}

    def _stepper(self, pool: np.ndarray, batch: int) -> Callable[[int], Any]:
        placed = [self.runner.place(x) for x in batches(pool, batch)]
        return lambda i: self.runner.forward(placed[i % len(placed)])


def takes(runner: Runner, pool: np.ndarray, batch: int) -> bool:
    """Whether ``runner`` accepts a batch of ``batch`` images: its static batch, else what ``place``
    accepts (an engine refuses sizes outside its optimization profile)."""
    if runner.batch is not None:
        return batch == runner.batch
    if runner.max_batch is not None and batch > runner.max_batch:
        return False
    try:
        runner.place(batches(pool, batch)[0])
    except BackendUnavailable:
        return False
    return True


def end_to_end(runner: Runner, image: Path, imgsz: int, classes: int) -> Any:
    """One image as an application runs it: decode the file, letterbox, forward, NMS."""
    x = letterbox(read_rgb(image), imgsz)[None]
    return detections(runner.predict(x), 0.25, 0.7, classes)


class NotDeployable(BackendUnavailable):
    """The row's artifact was left out of ``deploy.targets`` or failed its accuracy gate: skipped, not an error."""


def _artifact(spec: RowSpec, cfg: BenchmarkConfig, deploy: dict[str, Any]) -> Path:
    """The file a row measures.

    Raises:
        NotDeployable: When its artifact was not built or is not deployable.
        BackendUnavailable: When no TensorRT engine could be built here.
    """
    if spec.artifact == "checkpoint":
        return cfg.model
    if spec.artifact == "engine":
        engine = read_json(cfg.engine_metrics, stage=STAGE)
        if not engine.get("built"):
            raise BackendUnavailable(f"no TensorRT engine: {read_json(cfg.engine_report, stage=STAGE).get('reason')}")
        if not engine.get("deployable"):
            raise NotDeployable(f"the TensorRT engine is not deployable: a drop of {engine.get('drop_map50_95')}")
        return cfg.engine_dir / ENGINE_NAME
    facts = deploy.get(spec.artifact)
    if facts is None:
        raise NotDeployable(f"{spec.artifact} was not built (not in deploy.targets)")
    if not facts["deployable"]:
        raise NotDeployable(f"{spec.artifact} is not deployable: {facts['reason']}")
    return cfg.deploy_dir / TARGETS[spec.artifact].file


def _gpu_available(backend: str, cfg: BenchmarkConfig) -> bool:
    """Whether an optional GPU backend can run here (checked cheaply, without failing)."""
    import torch

    if not torch.cuda.is_available():
        return False
    if backend.startswith("pytorch-cuda"):
        return True
    if backend == "onnxruntime-cuda":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    if backend == "tensorrt":
        return cfg.engine_metrics.is_file() and bool(read_json(cfg.engine_metrics).get("built"))
    return False


def _open(backend: str, cfg: BenchmarkConfig, deploy: dict[str, Any]) -> Runner:
    spec = ROWS[backend]
    path = _artifact(spec, cfg, deploy)
    precision = spec.precision or read_json(cfg.engine_report, stage=STAGE)["precision"]
    return open_runner(
        spec.backend,
        path,
        workspace=cfg.workspace,
        device=cfg.engine_device if spec.artifact == "engine" else spec.device,
        precision=precision,
        threads=cfg.options.threads,
    )


class _Samples(BaseModel):
    """What one backend's rounds measured."""

    calls: list[float] = []  # every model-step call, ms
    round_p50s: list[float] = []
    end_to_end: list[float] = []
    batch_calls: dict[int, list[float]] = {}  # other batch sizes: every timed call of one batch, ms


def _measure(timed: dict[str, _Timed], o: BenchmarkParams) -> dict[str, _Samples]:
    """Time every backend, round by round, interleaved, so drift on the machine hits them all alike.

    Every round, each step (forward pass, end to end, each batch size) runs ``o.warmup`` untimed
    calls first: the backends before it in the round have evicted its caches, and a batch size's
    first calls allocate. The forward pass and end to end are then timed ``o.iterations`` times,
    each batch size ``o.sweep_iterations`` times.
    """
    samples = {name: _Samples() for name in timed}
    for _ in range(o.rounds):
        for name, t in timed.items():
            s = samples[name]
            calls = time_calls(t.step, o.iterations, o.warmup)
            s.calls.extend(calls)
            s.round_p50s.append(float(np.percentile(calls, 50)))
            if t.end_to_end is not None:
                s.end_to_end.extend(time_calls(t.end_to_end, o.iterations, o.warmup))
            for b, step in t.batch_steps.items():
                s.batch_calls.setdefault(b, []).extend(time_calls(step, o.sweep_iterations, o.warmup))
    return samples


def run(cfg: BenchmarkConfig) -> BenchmarkResult:
    """Measure every requested (and, with ``auto_gpu``, every available GPU) backend.

    Args:
        cfg: Paths and options.

    Returns:
        One row per backend measured, and why the others were skipped.

    Raises:
        BackendUnavailable: When a device backend named in ``benchmark.backends`` cannot run here.
        ConfigError: When the batch size does not fit the exported model.
    """
    o = cfg.options
    if not read_json(cfg.export_metrics, stage=STAGE).get("exported"):
        reason = "nothing was exported (the evaluation gate failed)"
        log.warning("nothing measured: %s", reason)
        result = BenchmarkResult(backends={}, skipped=dict.fromkeys(o.backends, reason))
        write_outputs(cfg, result)  # plots with headers only: DVC's outputs exist
        return result
    for path in (cfg.model, cfg.onnx):
        if not path.is_file():
            raise PipelineError("model file is missing; run the earlier stages first", stage=STAGE, path=path)
    static_batch = onnx_input_batch(cfg.onnx)
    if static_batch is not None and static_batch != o.batch:
        raise ConfigError(
            f"benchmark.batch={o.batch} but the ONNX model has a static batch of {static_batch} "
            "(set export.batch to match, or export.dynamic: true)",
            key="benchmark.batch",
        )
    deploy = read_json(cfg.deploy_report, stage=STAGE)
    images = validation_images(cfg.data_yaml, max(8, o.batch, *o.batch_sizes))
    pool = load_inputs(images, cfg.imgsz)
    classes = len(read_prepared_yaml(cfg.data_yaml)["names"])

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

    timed: dict[str, _Timed] = {}
    # Pinned before the runners open, so their thread pools start on the recorded CPUs; every runner is
    # closed when measuring ends (sessions, device memory, CUDA graphs), also when it fails.
    with pinned_cpus(o.threads) as cpus, contextlib.ExitStack() as opened:
        for backend in wanted:
            try:
                runner = _open(backend, cfg, deploy)
            except NotDeployable as exc:
                skipped[backend] = str(exc)
                log.warning("%s not measured: %s", backend, exc)
                continue
            opened.callback(runner.close)
            try:
                timed[backend] = _Timed(runner, pool, images, cfg.imgsz, classes, o)
            except BackendUnavailable as exc:
                if backend in o.backends:
                    raise  # asked for by name: benchmark.batch must fit it
                skipped[backend] = f"does not take benchmark.batch={o.batch}: {exc}"
                log.warning("%s not measured: %s", backend, skipped[backend])
        measured = _measure(timed, o)
        infos = {backend: t.info for backend, t in timed.items()}
        timed.clear()  # the placed batches (device memory) go before their runners close

    rows = []
    for backend, s in measured.items():
        info = infos[backend]
        latency = summarise(s.calls)
        cv, stable = stability(s.round_p50s, latency.p50, latency.min)
        by_batch = {o.batch: o.batch * 1e3 / latency.p50}
        by_batch |= {b: b * 1e3 / float(np.percentile(calls, 50)) for b, calls in s.batch_calls.items()}
        row = BenchmarkRow(
            backend=backend,
            provider=info.provider,
            device=info.device,
            precision=info.precision,
            batch=o.batch,
            imgsz=cfg.imgsz,
            threads=info.threads,
            iterations=o.iterations,
            warmup=o.warmup,
            rounds=o.rounds,
            sweep_iterations=o.sweep_iterations,
            latency_ms=latency,
            model_ms=latency.p50,
            end_to_end_ms=round(float(np.median(s.end_to_end)), 4) if s.end_to_end else None,
            round_p50_ms=[round(p, 4) for p in s.round_p50s],
            cpus=cpus,
            cv=cv,
            stable=int(stable),
            throughput_ips=round(o.batch * 1e3 / latency.p50, 2),
            throughput_ips_by_batch={str(b): round(v, 2) for b, v in sorted(by_batch.items())},
        )
        rows.append(row)
        log.info(
            "%-21s %-44s p50 %8.2f ms (cv %.2f)  p90 %8.2f ms  end-to-end %s  %8.1f img/s",
            backend,
            info.provider,
            latency.p50,
            cv,
            latency.p90,
            f"{row.end_to_end_ms:.2f} ms" if row.end_to_end_ms is not None else "-",
            row.throughput_ips,
        )
        if not stable:
            log.warning(
                "%s: NOT STABLE (round p50s %s ms, cv %.2f > %.2f or p50 %.2f > %.0f x min %.2f): "
                "the machine was busy; rerun before comparing",
                backend,
                row.round_p50_ms,
                cv,
                MAX_CV,
                latency.p50,
                MAX_P50_OVER_MIN,
                latency.min,
            )
    result = BenchmarkResult(backends={row.backend: row for row in rows}, skipped=skipped)
    write_outputs(cfg, result)
    return result


def write_outputs(cfg: BenchmarkConfig, result: BenchmarkResult) -> None:
    """Write every output of the stage: numbers, text, plots, and the numbers experiments compare."""
    metrics = result.metrics_record()
    write_json(cfg.metrics, metrics)
    write_json(cfg.report, result.report_record())
    write_plots(result, cfg.latency_plot, cfg.throughput_plot)
    deploy = read_json(cfg.deploy_metrics, default=None)
    backends = metrics["backends"]
    write_json(cfg.deployment, summary.deployment(deploy, summary_latency(backends), summary_unstable(backends)))


def write_plots(result: BenchmarkResult, latency: Path, throughput: Path) -> None:
    """The data of ``dvc plots``: p10/p50/p90 per backend, and images/s against batch size per backend."""
    latency.parent.mkdir(parents=True, exist_ok=True)
    throughput.parent.mkdir(parents=True, exist_ok=True)
    lines = ["backend,p10_ms,p50_ms,p90_ms"]
    lines += [f"{r.backend},{r.latency_ms.p10},{r.latency_ms.p50},{r.latency_ms.p90}" for r in result.backends.values()]
    latency.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["backend,batch,images_per_s"]
    lines += [f"{r.backend},{b},{v}" for r in result.backends.values() for b, v in r.throughput_ips_by_batch.items()]
    throughput.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BenchmarkConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
