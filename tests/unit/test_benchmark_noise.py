"""The benchmark publishes what it measured, not noise (issue 20, item 7).

One percentile definition, a warmed-up batch sweep with enough calls every round, CPUs actually
pinned, and ``metrics/deployment.json`` carrying each noisy row's flag beside its number. ONNX
Runtime's device binding (the ``model_ms`` boundary) is checked in ``tests/unit/test_runners.py``.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from stages import benchmark
from stages.core.config import BenchmarkParams
from stages.latency import rounds
from stages.latency.pinning import pinned_cpus
from stages.latency.results import MODEL_MS_BOUNDARY, BenchmarkResult
from stages.latency.rows import summary_latency, summary_unstable
from stages.latency.stats import summarise
from stages.reporting.summary import deployment

DEPLOY = {
    "onnx-fp32": {"deployable": 1, "size_mb": 10.4},
    "onnx-int8": {"deployable": 1, "size_mb": 3.1},
}


def test_every_percentile_pools_every_call_of_every_round():
    rounds = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [10.0, 10.0, 10.0]]
    pooled = [v for r in rounds for v in r]
    lat = summarise(pooled)
    # The median of the round medians would be 2.0; over every call it is 3.0, like p10/p90/p99.
    assert lat.p50 == pytest.approx(np.percentile(pooled, 50)) == pytest.approx(3.0)
    for name, q in (("p10", 10), ("p90", 90), ("p99", 99)):
        assert getattr(lat, name) == pytest.approx(np.percentile(pooled, q))


def test_deployment_flags_each_unstable_row_beside_its_number():
    rows = {
        "onnxruntime-cpu": {"model_ms": 4.4, "stable": 1},
        "onnxruntime-cpu-int8": {"model_ms": 3.9, "stable": 0},
        "pytorch-cpu": {"model_ms": 15.1, "stable": 0},  # the reference: not in the summary at all
        "tensorrt": {"model_ms": 0.9, "stable": 0},
    }
    summary = deployment(DEPLOY, summary_latency(rows), summary_unstable(rows))
    assert summary["ms"] == {"onnx-fp32": 4.4, "onnx-int8": 3.9, "tensorrt": 0.9}
    assert summary["unstable"] == {"onnx-int8": 1, "tensorrt": 1}
    stable = {k: {**v, "stable": 1} for k, v in rows.items()}
    assert "unstable" not in deployment(DEPLOY, summary_latency(stable), summary_unstable(stable))
    with pytest.raises(ValueError, match="without a latency"):
        deployment(DEPLOY, {}, ["onnx-int8"])


def test_the_report_names_the_unstable_rows_and_the_timing_boundary():
    result = BenchmarkResult(backends={}, skipped={})
    record = result.report_record()
    assert record["unstable"] == [] and record["model_ms"] == MODEL_MS_BOUNDARY
    assert "IOBinding" in MODEL_MS_BOUNDARY and "pooled" in record["percentiles"]


def _counting() -> tuple[list[int], object]:
    seen: list[int] = []
    return seen, seen.append


def test_every_step_is_warmed_up_and_timed_enough_every_round():
    o = BenchmarkParams(iterations=50, warmup=10, rounds=3, batch_sizes=[1, 8])
    model, step = _counting()
    e2e, end_to_end = _counting()
    sweep, batch_step = _counting()
    timed = {"fake": SimpleNamespace(step=step, end_to_end=end_to_end, batch_steps={8: batch_step})}
    samples = rounds.measure(timed, o)["fake"]
    # time_calls passes 0.. to the warm-up calls, then 0.. to the timed ones: each round is both, in turn.
    assert model == [*range(10), *range(50)] * 3
    assert e2e == [*range(10), *range(50)] * 3
    assert sweep == [*range(10), *range(20)] * 3, "batch 8: 10 warm-up and 20 timed calls in every round"
    assert len(samples.calls) == 150 and len(samples.round_p50s) == 3
    assert len(samples.batch_calls[8]) == 60


def test_the_sweep_has_a_stated_minimum_of_calls():
    assert BenchmarkParams().sweep_iterations == 20
    with pytest.raises(ValueError):
        BenchmarkParams(sweep_iterations=2)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux API")
def test_pinned_cpus_pins_every_thread_and_restores():
    before = os.sched_getaffinity(0)
    release = threading.Event()
    started = threading.Thread(target=release.wait)
    started.start()
    try:
        with pinned_cpus(1) as cpus:
            assert cpus == [min(before)]
            assert os.sched_getaffinity(0) == set(cpus)
            assert os.sched_getaffinity(started.native_id) == set(cpus), "a thread started before is pinned too"
            seen = []
            inside = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
            inside.start()
            inside.join()
            assert seen == [set(cpus)], "a thread started inside inherits the pin"
        assert os.sched_getaffinity(0) == before
        assert os.sched_getaffinity(started.native_id) == before
        with pinned_cpus(0) as every:
            assert every == sorted(before)
    finally:
        release.set()
        started.join()


class _FakeRunner:
    """A runner that records whether it was closed, and refuses work after."""

    def __init__(self, name: str, fail: bool = False) -> None:
        from stages.backends.base import RunInfo

        self.batch = self.max_batch = None
        self.inputs, self.outputs = [], []
        self.info = RunInfo(backend=name, provider="fake", device="cpu", precision="fp32", threads=1)
        self.fail = fail
        self.closed = False

    def place(self, x):
        return x

    def forward(self, placed):
        assert not self.closed, "a closed runner was used"
        if self.fail:
            raise RuntimeError("the runtime broke")
        return placed

    def predict(self, x):
        return self.forward(x)

    def close(self) -> None:
        self.closed = True


def _stage(tmp_path, monkeypatch: pytest.MonkeyPatch, runners: dict[str, _FakeRunner]):
    """``benchmark.run`` with its files faked and ``runners`` opened for the configured backends."""
    from pathlib import Path

    from stages.core.config import parse_params

    params = parse_params(
        {
            "benchmark": {
                "iterations": 3,
                "warmup": 1,
                "rounds": 2,
                "sweep_iterations": 5,
                "batch_sizes": [1, 2],
                "threads": 1,
                "backends": list(runners),
                "auto_gpu": False,
            }
        }
    )
    cfg = benchmark.BenchmarkConfig.from_params(params, tmp_path)
    for path in (cfg.model, cfg.onnx):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    written = {}
    monkeypatch.setattr(benchmark, "read_json", lambda path, **kw: {"exported": True})
    monkeypatch.setattr(benchmark, "onnx_input_batch", lambda path: None)
    monkeypatch.setattr(benchmark, "validation_images", lambda data, count: [Path(f"{i}.jpg") for i in range(count)])
    monkeypatch.setattr(benchmark, "load_inputs", lambda images, imgsz: np.zeros((len(images), 3, 8, 8), np.float32))
    monkeypatch.setattr(benchmark, "read_prepared_yaml", lambda path: {"names": {0: "a"}})
    monkeypatch.setattr(rounds, "end_to_end", lambda runner, image, imgsz, classes: runner.predict(image))
    monkeypatch.setattr(benchmark, "_open", lambda backend, cfg, deploy: runners[backend])
    monkeypatch.setattr(benchmark, "write_outputs", lambda cfg, result: written.update(result=result))
    return cfg, written


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux API")
def test_the_stage_closes_every_runner_after_measuring_and_records_the_pinned_cpus(tmp_path, monkeypatch):
    runners = {"onnxruntime-cpu": _FakeRunner("onnxruntime"), "pytorch-cpu": _FakeRunner("pytorch")}
    cfg, written = _stage(tmp_path, monkeypatch, runners)
    before = os.sched_getaffinity(0)
    result = benchmark.run(cfg)
    assert all(r.closed for r in runners.values())
    assert os.sched_getaffinity(0) == before
    for row in result.backends.values():
        assert row.cpus == [min(before)] and row.sweep_iterations == 5
        assert set(row.throughput_ips_by_batch) == {"1", "2"}
    assert written["result"] is result


def test_the_stage_closes_the_runners_it_opened_when_measuring_fails(tmp_path, monkeypatch):
    runners = {"onnxruntime-cpu": _FakeRunner("onnxruntime"), "pytorch-cpu": _FakeRunner("pytorch", fail=True)}
    cfg, _ = _stage(tmp_path, monkeypatch, runners)
    with pytest.raises(RuntimeError, match="the runtime broke"):
        benchmark.run(cfg)
    assert all(r.closed for r in runners.values())
