"""The CUDA-graph runner keeps, per captured shape, the module state its graph reads (issue 20, item 5).

A CUDA graph replays kernels on the addresses it captured. Ultralytics' Detect head replaces its
``anchors``/``strides`` tensors whenever the input shape changes, so capturing a second batch size
frees the first graph's anchors (and capture's ``empty_cache`` hands them back to the driver). CUDA is
not needed to see that: torch's capture API is replaced by stand-ins that run the module eagerly on
the CPU (the capture context collects garbage, as the real one may), and the test checks which
tensors outlive the second capture. The replay itself runs in ``tests/gpu/test_deploy_gpu.py``.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.backends import pytorch as torch_backend
from stages.backends.pytorch import CudaGraphRunner, static_state
from tests.conftest import tiny_yolo_export


class _Stream:
    def __init__(self, *args: object) -> None:
        pass

    def wait_stream(self, other: object) -> None:
        pass


class _Graph:
    replays = 0

    def replay(self) -> None:
        self.replays += 1


@contextlib.contextmanager
def _capture(graph: _Graph):
    gc.collect()  # torch.cuda.graph frees what nothing references (and empties the cache) before capturing
    yield


@pytest.fixture
def cpu_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "graph", _capture)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_yolo_export(tmp_path_factory, "graph", 64)


@pytest.fixture
def runner(model: dict[str, Path]) -> CudaGraphRunner:
    eager = torch_backend.load(Path(model["pt"]), device="cpu", precision="fp32", threads=1, workspace=model["root"])
    return CudaGraphRunner(eager.module, eager.device, "fp32", eager.info)


def _head(runner: CudaGraphRunner):
    return runner.module.model[-1]


def test_each_captured_shape_keeps_the_anchors_its_graph_reads(runner, cpu_capture):
    seen = {}
    for shape in [(1, 3, 64, 64), (8, 3, 64, 64), (1, 3, 96, 96)]:
        runner.forward(torch.zeros(shape))
        head = _head(runner)
        seen[shape] = (weakref.ref(head.anchors), weakref.ref(head.strides), head.anchors.shape[1])
    gc.collect()
    for shape, (anchors, strides, count) in seen.items():
        assert anchors() is not None and strides() is not None, f"the {shape} graph's anchors were freed"
        held = runner.graphs[shape].state
        assert any(t is anchors() for t in held) and any(t is strides() for t in held)
        # The graph for a shape reads the anchors built for that shape (64 px: 8² + 4² + 2² anchors).
        side = shape[-1]
        assert count == sum((side // s) ** 2 for s in (8, 16, 32))
    assert seen[(1, 3, 64, 64)][0]() is not seen[(1, 3, 96, 96)][0]()
    # Replaying an earlier shape captures nothing new.
    runner.forward(torch.zeros(1, 3, 64, 64))
    assert len(runner.graphs) == 3 and runner.graphs[(1, 3, 64, 64)].graph.replays == 2


def test_static_state_is_the_plain_tensor_attributes_not_parameters():
    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)
            self.register_buffer("kept", torch.ones(1))
            self.anchors = torch.zeros(2, 3)
            self.pair = (torch.ones(1), "not a tensor")

    head = Head()
    held = static_state(torch.nn.Sequential(head))
    assert any(t is head.anchors for t in held) and any(t is head.pair[0] for t in held)
    assert not any(t is head.kept or t is head.conv.weight for t in held)
    assert len(held) == 2


def test_close_drops_the_graphs_and_the_module(runner, cpu_capture):
    runner.forward(torch.from_numpy(np.zeros((1, 3, 64, 64), dtype=np.float32)))
    runner.close()
    assert runner.graphs == {} and runner.module is None
