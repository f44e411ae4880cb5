"""metrics/quality.json and metrics/deployment.json: the few numbers experiments are compared on, as short columns."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stages.deploy.targets import TARGETS
from stages.latency.rows import ROWS, summary_latency, summary_name
from stages.reporting.summary import class_keys, deployment, quality, unsafe_class_names
from tests.unit.test_dvc_yaml import DVC

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


def test_quality_holds_the_verdict_map_and_ap_per_class_only():
    assert quality(EVALUATE) == {"gate": 1, "map50": 0.41, "map50_95": 0.24, "ap": {"square": 0.3, "disc": 0.18}}
    failed = {**EVALUATE, "gates": {"passed": 0, "failed": 1, "checks": {}}}
    assert quality(failed)["gate"] == 0


def test_deployment_holds_latency_per_artifact_and_size_of_the_deployable_ones():
    assert deployment(DEPLOY, summary_latency(BENCHMARK["backends"])) == {
        "deployable": 1,
        "ms": {"onnx-fp32": 4.4, "onnx-int8": 3.9, "tensorrt": 0.9},  # not the PyTorch reference
        "mb": {"onnx-fp32": 10.4},  # an artifact that failed its gate is no size anyone ships
    }


def test_deployment_when_nothing_was_exported_is_a_zero_count():
    assert deployment(None, summary_latency({})) == {"deployable": 0}


def test_every_cpu_row_of_a_deploy_artifact_is_named_after_the_artifact():
    for row, spec in ROWS.items():
        key = summary_name(row)
        if spec.device == "cpu" and spec.artifact in TARGETS:
            assert key == spec.artifact
        else:
            assert key == row
    keys = [summary_name(row) for row in ROWS]
    assert len(keys) == len(set(keys)), "two benchmark rows would share one summary column"


def test_only_the_compared_files_are_declared_metrics_and_every_stage_file_is_still_an_output():
    declared = {m for stage in DVC.values() for m in stage.get("metrics", [])}
    assert declared == {"${paths.quality_metrics}", "${paths.deployment_metrics}"}
    assert "${paths.quality_metrics}" in DVC["evaluate"]["metrics"]
    assert "${paths.deployment_metrics}" in DVC["benchmark"]["metrics"]
    for stage in ("evaluate", "benchmark"):
        assert "stages/reporting/summary.py" in DVC[stage]["deps"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for stage in DVC.values() for o in stage.get("outs", [])}
    for name in ("train", "evaluate", "export", "deploy", "engine", "benchmark"):
        assert f"${{paths.{name}_metrics}}" in outs, f"metrics/{name}.json is no longer written as an output"


def test_class_names_become_key_names_that_no_column_tool_splits():
    """Issue 25: a '/' made `--drop '.*/'` hide the class; a '.' or a space split its column name."""
    evaluate = {
        **EVALUATE,
        "per_class": {
            "bus/coach": {"ap50_95": 0.3},
            "traffic light": {"ap50_95": 0.2},
            "v1.2": {"ap50_95": 0.1},
            "car": {"ap50_95": 0.4},
        },
    }
    assert quality(evaluate)["ap"] == {"bus_coach": 0.3, "traffic_light": 0.2, "v1_2": 0.1, "car": 0.4}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in quality(evaluate)["ap"])


def test_class_keys_stay_distinct_and_stable_when_two_names_escape_alike():
    names = ["bus/coach", "bus coach", "bus_coach_1", "car", ""]
    keys = class_keys(names)
    assert keys == {
        "bus/coach": "bus_coach_0",
        "bus coach": "bus_coach_1_1",
        "bus_coach_1": "bus_coach_1_2",
        "car": "car",
        "": "_",
    }
    assert class_keys(names) == keys
    assert unsafe_class_names(["square", "bus/coach"]) == {"bus/coach": "bus_coach"}


def test_coco_class_names_all_get_distinct_safe_keys(coco128: Path):
    names = yaml.safe_load((coco128 / "data.yaml").read_text())["names"]
    names = list(names.values()) if isinstance(names, dict) else names
    keys = class_keys(names)
    assert len(set(keys.values())) == len(names) == 80
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in keys.values())
    # Only the names with a space need a key of their own ("traffic light" -> "traffic_light").
    assert set(unsafe_class_names(names)) == {name for name in names if " " in name}
    assert keys["traffic light"] == "traffic_light"
