"""GPU tier: CUDA training with AMP, the offline AMP check, and GPU latency rows.

Skipped without CUDA. Runs the stages' ``run`` functions on the sample data in a temporary workspace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import benchmark, build_engine, evaluate, export, prepare, train, validate
from stages.config import parse_params
from stages.sample_data import SampleSpec, generate
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


def test_cuda_training_uses_amp_without_downloading(gpu_workspace):
    root, params = gpu_workspace
    result = train.run(train.TrainConfig.from_params(params, root))
    assert result.device.startswith("cuda")
    assert result.amp is True, "the offline AMP check should pass on a healthy GPU"
    assert (root / "models" / "best.pt").is_file()
    weights_dir = root / ".cache" / "ultralytics" / "weights"
    assert not weights_dir.exists() or not any(weights_dir.glob("*.pt")), "the AMP check must not fetch weights"


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
    if engine.status == "built":
        assert "tensorrt" in backends
    else:
        assert "TensorRT" in (engine.reason or "") or "tensorrt" in (engine.reason or "").lower()
