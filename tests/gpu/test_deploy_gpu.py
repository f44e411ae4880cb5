"""GPU tier: deploy backends on CUDA (PyTorch FP16, ONNX Runtime CUDA, CUDA graphs).

Skipped without CUDA. TensorRT engines are tested in ``test_tensorrt_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.backends import open_runner
from stages.backends.base import predict_all
from stages.backends.compare import Tolerance, compare, failures
from tests.conftest import cuda_available, tiny_yolo_export

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU; none is visible to PyTorch here"),
]
IMGSZ = 160


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_yolo_export(tmp_path_factory, "gpu-deploy", IMGSZ)


def _inputs(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).random((count, 3, IMGSZ, IMGSZ), dtype=np.float32)


def test_pytorch_fp16_on_cuda_matches_fp32(model):
    fp32 = open_runner("pytorch", model["pt"], workspace=model["root"], device="cuda")
    fp16 = open_runner("pytorch", model["pt"], workspace=model["root"], device="cuda", precision="fp16")
    assert fp16.info.device.startswith("cuda") and fp16.info.precision == "fp16" and fp16.info.threads is None
    x = _inputs()
    ref, half = predict_all(fp32, x), predict_all(fp16, x)
    assert failures(compare(ref, half), Tolerance(max_scores=2e-2)) == []


def _ort_cuda_missing() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider here (the 'gpu' extra brings onnxruntime-gpu)"
    return None


@pytest.mark.skipif(_ort_cuda_missing() is not None, reason=_ort_cuda_missing() or "")
def test_onnxruntime_cuda_binds_on_the_device_and_matches_the_cpu(model):
    cuda = open_runner("onnxruntime", model["onnx"], workspace=model["root"], device="cuda")
    cpu = open_runner("onnxruntime", model["onnx"], workspace=model["root"])
    x = _inputs(1)
    placed = cuda.place(x)
    # model_ms's boundary: the input is on the GPU before forward, the outputs stay there (TF32 convolutions
    # on the GPU: tolerances of rounding, far below what a misbound tensor would give).
    assert placed.value.device_name() == "cuda"
    cuda.forward(placed)
    assert [o.device_name() for o in placed.binding.get_outputs()] == ["cuda"]
    found = failures(compare(cpu.predict(x), cuda.predict(x)), Tolerance(max_boxes_px=0.5, max_scores=1e-2))
    assert found == []
    cuda.close()


# Graph replay runs the eager module's own kernels: boxes within a pixel's fraction, scores within rounding.
GRAPH_TOLERANCE = {
    "fp32": Tolerance(max_boxes_px=1e-2, max_scores=1e-4),
    "fp16": Tolerance(max_boxes_px=0.5, max_scores=2e-2),
}


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_graph_replay_matches_eager(model, precision):
    eager = open_runner("pytorch", model["pt"], workspace=model["root"], device="cuda", precision=precision)
    graph = open_runner("pytorch-cuda-graph", model["pt"], workspace=model["root"], device="cuda", precision=precision)
    assert graph.info.backend == "pytorch-cuda-graph" and "CUDA graph" in graph.info.provider
    for seed in (0, 1):  # the second call replays the captured graph on new input
        x = np.random.default_rng(seed).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
        assert failures(compare(eager.predict(x), graph.predict(x)), GRAPH_TOLERANCE[precision]) == []
    assert len(graph.graphs) == 1, "one capture per input shape"
    graph.close()
    eager.close()


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_graphs_of_two_batch_sizes_replay_in_turn_like_eager(model, precision):
    """Issue 20 item 5: capturing batch 8 rebuilt the head's anchors and freed batch 1's, which its graph
    still read (the benchmark's default batch_sizes [1, 8] did exactly this). Boxes show it: scores do
    not use the anchors."""
    eager = open_runner("pytorch", model["pt"], workspace=model["root"], device="cuda", precision=precision)
    graph = open_runner("pytorch-cuda-graph", model["pt"], workspace=model["root"], device="cuda", precision=precision)
    for seed, batch in enumerate([1, 8, 1, 8, 1]):  # capture 1, capture 8, then replay each in turn
        x = np.random.default_rng(seed).random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)
        found = failures(compare(eager.predict(x), graph.predict(x)), GRAPH_TOLERANCE[precision])
        assert found == [], f"call {seed} (batch {batch}): {found}"
    assert sorted(graph.graphs) == [(1, 3, IMGSZ, IMGSZ), (8, 3, IMGSZ, IMGSZ)]
    graph.close()
    eager.close()
