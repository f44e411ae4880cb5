"""The ``benchmark`` section (``stages/benchmark.py``): latency and throughput measurement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from stages.core.config.base import _Section


class BenchmarkParams(_Section):
    """Latency and throughput measurement."""

    iterations: int = Field(50, ge=1, description="timed forward passes (and end-to-end calls) per round")
    warmup: int = Field(10, ge=0, description="untimed calls before each timed step, in every round")
    batch: int = Field(1, ge=1)
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for CPU backends; the measuring process is pinned to that many CPUs (the "
        "lowest-numbered it may use), recorded per row; 0: every core this process may use",
    )
    rounds: int = Field(
        5,
        ge=1,
        description="interleaved rounds; percentiles pool every round's calls, cv is the spread of the round medians",
    )
    batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [1, 8],
        description="throughput in images/s per batch size, for every backend whose artifact takes that batch",
    )
    sweep_iterations: int = Field(
        20, ge=5, description="timed calls per batch size per round in the throughput sweep (after `warmup`)"
    )
    backends: list[
        Literal[
            "onnxruntime-cpu",
            "onnxruntime-cpu-int8",
            "openvino-cpu",
            "openvino-cpu-int8",
            "torchscript-cpu",
            "pytorch-cpu",
            "onnxruntime-cuda",
            "pytorch-cuda",
            "pytorch-cuda-graph",
            "pytorch-cuda-graph-fp32",
            "tensorrt",
        ]
    ] = Field(
        default_factory=lambda: ["onnxruntime-cpu", "onnxruntime-cpu-int8", "pytorch-cpu"],
        description="backends to measure; GPU ones fail the stage when unavailable, "
        "deploy artifacts not built or not deployable are skipped with the reason",
    )
    auto_gpu: bool = Field(True, description="also measure every GPU backend that is available here")
