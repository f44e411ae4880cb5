"""What ``benchmark`` publishes: one row per backend from what its rounds measured, the stage's result
(numbers for ``metrics/``, text for ``reports/``), and the data of the latency and throughput plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from stages.backends import RunInfo
from stages.core.config import BenchmarkParams
from stages.latency.rounds import Samples
from stages.latency.stats import PERCENTILES, Latency, stability, summarise

MODEL_MS_BOUNDARY = (
    "one forward pass of one batch already in the runtime's memory (CUDA rows: a device tensor, "
    "ONNX Runtime's IOBinding on the device, TensorRT's device buffer), outputs left there, "
    "CUDA synchronised before the clock stops; no host-device copy is timed"
)


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
        """The numbers of every row, for ``metrics/benchmark.json``."""
        return {"backends": {k: r.model_dump(exclude=self.TEXT, exclude_none=True) for k, r in self.backends.items()}}

    def report_record(self) -> dict[str, Any]:
        """What ran, the round p50s, the skips and the timing boundary, for ``reports/benchmark.json``."""
        rows = {k: r.model_dump(include=self.TEXT - {"backend"}) for k, r in self.backends.items()}
        return {
            "backends": rows,
            "skipped": self.skipped,
            "unstable": sorted(k for k, r in self.backends.items() if not r.stable),
            "model_ms": MODEL_MS_BOUNDARY,
            "percentiles": PERCENTILES,
        }


def measured_row(
    backend: str, info: RunInfo, s: Samples, o: BenchmarkParams, imgsz: int, cpus: list[int] | None
) -> BenchmarkRow:
    """One backend's row from every call its rounds timed.

    Args:
        backend: The row's name (a key of :data:`stages.latency.rows.ROWS`).
        info: What ran, as the runtime reported it.
        s: Every timed call of the backend's rounds.
        o: The ``benchmark`` params it was measured with.
        imgsz: The input size.
        cpus: The CPUs the process was pinned to.

    Returns:
        The row; ``stable`` 0 when the rounds disagree (:func:`stages.latency.stats.stability`).
    """
    latency = summarise(s.calls)
    cv, stable = stability(s.round_p50s, latency.p50, latency.min)
    by_batch = {o.batch: o.batch * 1e3 / latency.p50}
    by_batch |= {b: b * 1e3 / float(np.percentile(calls, 50)) for b, calls in s.batch_calls.items()}
    return BenchmarkRow(
        backend=backend,
        provider=info.provider,
        device=info.device,
        precision=info.precision,
        batch=o.batch,
        imgsz=imgsz,
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
