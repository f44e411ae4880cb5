"""metrics/summary.json: the few numbers experiments are compared on, named as short columns."""

from __future__ import annotations

from stages.benchmark import ROWS
from stages.deploy.targets import TARGETS
from stages.summary import latency_key, summarize

EVALUATE = {
    "map50": 0.41,
    "map50_95": 0.24,
    "precision": 0.5,
    "recall": 0.4,
    "per_class": {
        "square": {"instances": 9, "precision": 0.6, "recall": 0.5, "ap50": 0.5, "ap50_95": 0.3},
        "disc": {"instances": 7, "precision": 0.4, "recall": 0.3, "ap50": 0.3, "ap50_95": 0.18},
    },
    "gates": {"passed": 1, "failed": 0, "checks": {}},
}
DEPLOY = {
    "pytorch": {"map50": 0.41, "map50_95": 0.24},
    "onnx-fp32": {"deployable": 1, "map50": 0.41, "map50_95": 0.24, "size_mb": 10.4, "max_drop": 0.002},
    "onnx-int8": {"deployable": 0, "map50": 0.2, "map50_95": 0.1, "size_mb": 3.1, "max_drop": 0.01},
}
BENCHMARK = {
    "backends": {
        "onnxruntime-cpu": {"model_ms": 4.4, "cv": 0.02, "latency_ms": {"p50": 4.4}},
        "onnxruntime-cpu-int8": {"model_ms": 3.9, "cv": 0.03, "latency_ms": {"p50": 3.9}},
        "pytorch-cpu": {"model_ms": 15.1, "cv": 0.05, "latency_ms": {"p50": 15.1}},
        "tensorrt": {"model_ms": 0.9, "cv": 0.01, "latency_ms": {"p50": 0.9}},
    }
}


def test_summary_holds_quality_per_class_latency_and_size_only():
    summary = summarize(EVALUATE, DEPLOY, BENCHMARK)
    assert summary == {
        "gate": 1,
        "deployable": 1,
        "map50": 0.41,
        "map50_95": 0.24,
        "ap": {"square": 0.3, "disc": 0.18},
        "ms": {"onnx-fp32": 4.4, "onnx-int8": 3.9, "tensorrt": 0.9},
        "mb": {"onnx-fp32": 10.4},  # an artifact that failed its gate is no size anyone ships
    }


def test_summary_after_a_failed_gate_has_the_verdict_and_no_deploy_columns():
    failed = {**EVALUATE, "gates": {"passed": 0, "failed": 1, "checks": {}}}
    summary = summarize(failed, None, None)
    assert summary["gate"] == 0 and summary["deployable"] == 0
    assert "ms" not in summary and "mb" not in summary


def test_every_cpu_row_of_a_deploy_artifact_is_named_after_the_artifact():
    for row, spec in ROWS.items():
        key = latency_key(row)
        if spec.device == "cpu" and spec.artifact in TARGETS:
            assert key == spec.artifact
        else:
            assert key == row
    keys = [latency_key(row) for row in ROWS]
    assert len(keys) == len(set(keys)), "two benchmark rows would share one summary column"
