"""GPU tier: CUDA training with AMP, the offline AMP check, and GPU latency rows.

Skipped without CUDA. Runs the stages' ``run`` functions on the sample data in a temporary workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stages import benchmark, build_engine, evaluate, export, prepare, train, validate
from stages.core import runtime
from stages.core.config import parse_params
from stages.data.sample_data import SampleSpec, generate
from tests.conftest import cuda_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU; none is visible to PyTorch here"),
]


@pytest.fixture(scope="module")
def gpu_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("gpu-ws")
    generate(SampleSpec(out=root / "data" / "dataset", train=48, val=16, size=160, seed=0))
    params = parse_params(
        {
            "train": {"device": "0", "epochs": 3, "imgsz": 160, "batch": 16, "amp": True},
            "benchmark": {"iterations": 30, "warmup": 5},
        }
    )
    prepare.run(prepare.PrepareConfig.from_params(params, root))
    validate.run(validate.ValidateConfig.from_params(params, root))
    return root, params


def _weights_files(folder: Path, recursive: bool) -> set[Path]:
    return set(folder.rglob("*.pt") if recursive else folder.glob("*.pt"))


def test_cuda_training_uses_amp_without_downloading(gpu_workspace, monkeypatch: pytest.MonkeyPatch):
    root, params = gpu_workspace
    # amp=True alone proves nothing: offline, Ultralytics' own check fails to download its model,
    # warns and leaves AMP on. So the project's check (stages/core/runtime.py) must be the one that ran.
    verdicts: list[bool] = []
    project_check = runtime._amp_outputs_close

    def spy(model: Any) -> bool:
        verdicts.append(project_check(model))
        return verdicts[-1]

    monkeypatch.setattr(runtime, "_amp_outputs_close", spy)
    in_cwd = _weights_files(Path.cwd(), recursive=False)  # Ultralytics downloads beside the caller too
    result = train.run(train.TrainConfig.from_params(params, root))
    assert result.device.startswith("cuda")
    assert verdicts == [True], "the project's offline AMP check did not run (or did not pass) on the GPU"
    assert result.amp is True
    assert (root / "models" / "best.pt").is_file()
    # The pipeline's own weights live under models/ and .cache/train-runs/; any other .pt was fetched.
    own = (root / "models", root / params.paths.train_runs)
    stray = {p for p in _weights_files(root, recursive=True) if not any(p.is_relative_to(d) for d in own)}
    assert stray == set(), "training fetched weights"
    assert _weights_files(Path.cwd(), recursive=False) == in_cwd, "training fetched weights into the working folder"


def test_gpu_backends_are_benchmarked(gpu_workspace):
    root, params = gpu_workspace
    evaluate.run(evaluate.EvaluateConfig.from_params(params, root))
    export.run(export.ExportConfig.from_params(params, root))
    engine = build_engine.run(build_engine.BuildEngineConfig.from_params(params, root))
    result = benchmark.run(benchmark.BenchmarkConfig.from_params(params, root))
    backends = result.backends
    assert "pytorch-cuda" in backends
    assert backends["pytorch-cuda"].device.startswith("cuda:0")
    assert backends["pytorch-cuda"].latency_ms.p50 > 0
    # benchmark.batch_sizes [1, 8] captures a CUDA graph per batch size in one runner (issue 20, item 5).
    for graph_row in ("pytorch-cuda-graph", "pytorch-cuda-graph-fp32"):
        assert set(backends[graph_row].throughput_ips_by_batch) == {"1", "8"}, graph_row
    if engine.status == "built":
        assert "tensorrt" in backends
    else:
        assert "TensorRT" in (engine.reason or "") or "tensorrt" in (engine.reason or "").lower()
