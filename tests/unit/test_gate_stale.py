"""``stages.gate`` refuses a verdict made with other params than ``params.yaml`` holds now (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stages import gate
from stages.core.cli import REFUSED_EXIT
from stages.core.config import EvaluateParams
from stages.evaluate import ClassMetrics, build_checks

RECORDED = {"min_map50": 0.1, "min_map50_95": 0.05, "min_class_map50": {"person": 0.2}, "batch": 16}


def _workspace(root: Path, evaluate_now: dict) -> Path:
    """A workspace whose evaluate ran (passed) with ``RECORDED``, and whose params.yaml now holds ``evaluate_now``."""
    checks = build_checks(
        0.5,
        0.3,
        {"person": ClassMetrics(instances=3, precision=0.5, recall=0.5, ap50=0.5, ap50_95=0.3)},
        EvaluateParams(**RECORDED),
    )
    metrics = root / "metrics" / "evaluate.json"
    metrics.parent.mkdir(parents=True)
    checks_json = {n: c.model_dump() for n, c in checks.items()}
    metrics.write_text(json.dumps({"gates": {"passed": 1, "failed": 0, "checks": checks_json}}))
    lock = {
        "schema": "2.0",
        "stages": {
            "evaluate": {
                "cmd": "python -m stages.evaluate",
                "params": {"params.yaml": {"evaluate": RECORDED, "train.imgsz": 160}},
            }
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "params.yaml").write_text(yaml.safe_dump({"evaluate": evaluate_now, "train": {"imgsz": 160}}))
    return root / "params.yaml"


def test_gate_passes_when_params_are_those_evaluate_ran_with(tmp_path: Path):
    assert gate.main(["--params", str(_workspace(tmp_path, dict(RECORDED)))]) == 0


def test_gate_refuses_a_stale_verdict_naming_the_changed_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    now = {**RECORDED, "min_map50": 0.6, "min_class_map50": {"person": 0.2, "car": 0.1}}
    assert gate.main(["--params", str(_workspace(tmp_path, now))]) == REFUSED_EXIT
    err = capsys.readouterr().err
    assert "stale" in err and "dvc repro evaluate" in err
    assert "evaluate.min_map50: 0.1 -> 0.6" in err
    assert "evaluate.min_class_map50.car: (absent) -> 0.1" in err
    assert "quality gate passed" not in err


def test_no_dvc_lock_entry_takes_the_verdict_as_it_is(tmp_path: Path):
    params = _workspace(tmp_path, {**RECORDED, "min_map50": 0.6})
    (tmp_path / "dvc.lock").unlink()
    assert gate.changed_params(tmp_path, "evaluate") == []
    assert gate.main(["--params", str(params)]) == 0


def test_numbers_are_read_as_dvc_reads_them(tmp_path: Path):
    """``1e-3`` in params.yaml is the number DVC recorded (YAML 1.2), not a changed string (PyYAML's YAML 1.1)."""
    params = _workspace(tmp_path, dict(RECORDED))
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    lock["stages"]["evaluate"]["params"]["params.yaml"]["evaluate"]["min_map50_95"] = 1e-5
    # As DVC (ruamel) writes a small float into dvc.lock: "1e-05", no dot, which PyYAML reads as a string.
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock).replace("min_map50_95: 1.0e-05", "min_map50_95: 1e-05"))
    params.write_text(params.read_text().replace("min_map50_95: 0.05", "min_map50_95: 1e-5"))
    assert "1e-5" in params.read_text() and "min_map50_95: 1e-05" in (tmp_path / "dvc.lock").read_text()
    assert gate.changed_params(tmp_path, "evaluate") == []
