"""Stage ``benchmark``: latency percentiles and throughput of the model on every backend measured here.

Every backend is opened through ``stages.backends`` and gets the same letterboxed validation images.
Two figures per backend: ``model_ms``, one forward pass of one batch, and ``end_to_end_ms``, one
image as an application runs it (decode, letterbox, forward, NMS, without NMS's time limit).

``model_ms`` has one boundary for every backend (:data:`stages.latency.results.MODEL_MS_BOUNDARY`): the
batch is already in the runtime's memory before the clock starts (a CUDA tensor for PyTorch, an ``OrtValue`` bound
through ONNX Runtime's ``IOBinding`` on the session's device, TensorRT's device buffer; host memory
on the CPU), the outputs stay where the runtime wrote them, and CUDA work is synchronised before the
clock stops: no host-device copy is timed. What ran (provider, device, precision, threads) is read
back from the runtime; the process is pinned to the CPUs it records
(:func:`stages.latency.pinning.pinned_cpus`).

The measurement states its noise: ``benchmark.rounds`` rounds, the backends interleaved within
each, so drift on the machine hits them all alike. Every round, every timed step (the forward pass,
end to end, each batch size of the throughput sweep) first runs ``benchmark.warmup`` untimed calls;
then the forward pass and end to end are timed ``benchmark.iterations`` times, each batch size
``benchmark.sweep_iterations`` times. Every percentile (p10, p50, p90, p99) is taken over every
timed call of every round, pooled (:func:`stages.latency.stats.summarise`); ``cv`` is the spread of
the round medians.
``stable: 0`` (and a warning) when ``cv`` exceeds 0.10 or the p50 is more than 3 times the fastest
call; ``metrics/deployment.json`` flags such a row beside its number (``stages.reporting.summary``). Deploy
artifacts that were not built or are not deployable are skipped with the reason.

The measuring (timing loop, rounds, stability, rows, the result's records) lives in ``stages.latency``;
this entry opens the runners, orchestrates the rounds and writes the outputs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.backends import Runner, open_runner
from stages.backends.inference import load_inputs, onnx_input_batch, validation_images
from stages.core.common import read_json, stage_main, write_json
from stages.core.config import BenchmarkParams, Params
from stages.core.errors import BackendUnavailable, ConfigError, PipelineError
from stages.data.datasets import read_prepared_yaml
from stages.deploy.targets import ENGINE_NAME, TARGETS
from stages.latency.pinning import pinned_cpus
from stages.latency.results import BenchmarkResult, BenchmarkRow, measured_row, write_plots
from stages.latency.rounds import Timed, measure
from stages.latency.rows import GPU_BACKENDS, ROWS, RowSpec, summary_latency, summary_unstable
from stages.latency.stats import MAX_CV, MAX_P50_OVER_MIN
from stages.reporting import summary

log = logging.getLogger(__name__)

STAGE = "benchmark"


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

    timed: dict[str, Timed] = {}
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
                timed[backend] = Timed(runner, pool, images, cfg.imgsz, classes, o)
            except BackendUnavailable as exc:
                if backend in o.backends:
                    raise  # asked for by name: benchmark.batch must fit it
                skipped[backend] = f"does not take benchmark.batch={o.batch}: {exc}"
                log.warning("%s not measured: %s", backend, skipped[backend])
        measured = measure(timed, o)
        infos = {backend: t.info for backend, t in timed.items()}
        timed.clear()  # the placed batches (device memory) go before their runners close

    rows = [measured_row(backend, infos[backend], s, o, cfg.imgsz, cpus) for backend, s in measured.items()]
    for row in rows:
        _log_row(row)
    result = BenchmarkResult(backends={row.backend: row for row in rows}, skipped=skipped)
    write_outputs(cfg, result)
    return result


def _log_row(row: BenchmarkRow) -> None:
    """One line per backend measured, and a warning for a row that is not stable."""
    latency = row.latency_ms
    log.info(
        "%-21s %-44s p50 %8.2f ms (cv %.2f)  p90 %8.2f ms  end-to-end %s  %8.1f img/s",
        row.backend,
        row.provider,
        latency.p50,
        row.cv,
        latency.p90,
        f"{row.end_to_end_ms:.2f} ms" if row.end_to_end_ms is not None else "-",
        row.throughput_ips,
    )
    if not row.stable:
        log.warning(
            "%s: NOT STABLE (round p50s %s ms, cv %.2f > %.2f or p50 %.2f > %.0f x min %.2f): "
            "the machine was busy; rerun before comparing",
            row.backend,
            row.round_p50_ms,
            row.cv,
            MAX_CV,
            latency.p50,
            MAX_P50_OVER_MIN,
            latency.min,
        )


def write_outputs(cfg: BenchmarkConfig, result: BenchmarkResult) -> None:
    """Write every output of the stage: numbers, text, plots, and the numbers experiments compare."""
    metrics = result.metrics_record()
    write_json(cfg.metrics, metrics)
    write_json(cfg.report, result.report_record())
    write_plots(result, cfg.latency_plot, cfg.throughput_plot)
    deploy = read_json(cfg.deploy_metrics, default=None)
    backends = metrics["backends"]
    write_json(cfg.deployment, summary.deployment(deploy, summary_latency(backends), summary_unstable(backends)))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BenchmarkConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
