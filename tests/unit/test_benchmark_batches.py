"""The benchmark sends a runner only batch sizes it takes (an engine's profile), and opens the engine on
``engine.device``: found in review, each test fails on the code before the fix."""

from __future__ import annotations

import numpy as np
import pytest

from stages import benchmark
from stages.core.errors import BackendUnavailable
from stages.latency import rounds
from tests.unit.test_benchmark_noise import _FakeRunner, _stage


class _ProfiledRunner(_FakeRunner):
    """A dynamic-batch runner with an optimization profile of 2..4 images, as a TensorRT engine has."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.max_batch = 4
        self.sent: list[int] = []

    def place(self, x):
        if not 2 <= len(x) <= 4:
            raise BackendUnavailable(f"input shape {list(x.shape)} is outside the engine's profile [2] .. [4]")
        return x

    def forward(self, placed):
        self.sent.append(len(placed))
        return super().forward(placed)


def test_a_runner_is_sent_only_the_batch_sizes_its_profile_takes():
    runner = _ProfiledRunner("tensorrt")
    pool = np.zeros((8, 3, 8, 8), np.float32)
    assert [b for b in (1, 2, 4, 8) if rounds.takes(runner, pool, b)] == [2, 4]
    static = _FakeRunner("onnxruntime")
    static.batch = static.max_batch = 1
    assert [b for b in (1, 2, 8) if rounds.takes(static, pool, b)] == [1]


def test_an_automatic_gpu_row_whose_profile_misses_the_batch_is_skipped_with_the_reason(tmp_path, monkeypatch):
    runners = {"onnxruntime-cpu": _FakeRunner("onnxruntime"), "tensorrt": _ProfiledRunner("tensorrt")}
    cfg, _ = _stage(tmp_path, monkeypatch, runners)
    o = cfg.options.model_copy(update={"backends": ["onnxruntime-cpu"], "auto_gpu": True, "batch_sizes": [1, 4, 8]})
    cfg = cfg.model_copy(update={"options": o})
    monkeypatch.setattr(benchmark, "_gpu_available", lambda backend, cfg: backend == "tensorrt")
    result = benchmark.run(cfg)
    assert "does not take benchmark.batch=1" in result.skipped["tensorrt"]
    assert set(result.backends) == {"onnxruntime-cpu"} and runners["tensorrt"].closed
    # Asked for by name, the same row fails the stage: the params ask for what cannot run.
    named = cfg.model_copy(update={"options": o.model_copy(update={"backends": ["tensorrt"]})})
    with pytest.raises(BackendUnavailable, match="outside the engine's profile"):
        benchmark.run(named)


def test_a_profile_that_takes_the_batch_is_measured_at_its_sizes_only(tmp_path, monkeypatch):
    runner = _ProfiledRunner("tensorrt")
    cfg, _ = _stage(tmp_path, monkeypatch, {"tensorrt": runner})
    o = cfg.options.model_copy(update={"batch": 2, "batch_sizes": [1, 2, 4, 8]})
    result = benchmark.run(cfg.model_copy(update={"options": o}))
    row = result.backends["tensorrt"]
    assert set(row.throughput_ips_by_batch) == {"2", "4"} and row.end_to_end_ms is None
    assert set(runner.sent) == {2, 4}


def test_the_engine_row_opens_on_engine_device(tmp_path, monkeypatch):
    from stages.core.config import parse_params

    params = parse_params({"engine": {"device": "cuda:1"}})
    cfg = benchmark.BenchmarkConfig.from_params(params, tmp_path)
    opened = {}
    monkeypatch.setattr(benchmark, "_artifact", lambda spec, cfg, deploy: tmp_path / "model.engine")
    monkeypatch.setattr(benchmark, "read_json", lambda path, **kw: {"precision": "fp16"})
    monkeypatch.setattr(benchmark, "open_runner", lambda backend, path, **kw: opened.setdefault(backend, kw))
    benchmark._open("tensorrt", cfg, {})
    benchmark._open("pytorch-cuda", cfg, {})
    assert opened["tensorrt"]["device"] == "cuda:1" and opened["tensorrt"]["precision"] == "fp16"
    assert opened["pytorch"]["device"] == "cuda"
