import pytest

from stages.core.config import EvaluateParams
from stages.core.errors import ConfigError, GateFailed
from stages.core.verdict import describe, failed_checks
from stages.evaluate import ClassMetrics, build_checks


def per_class(**ap50):
    return {
        name: ClassMetrics(instances=1 if v is not None else 0, precision=v, recall=v, ap50=v, ap50_95=v)
        for name, v in ap50.items()
    }


def test_all_gates_pass_at_or_above_thresholds():
    checks = build_checks(0.5, 0.3, per_class(a=0.5), EvaluateParams(min_map50=0.5, min_map50_95=0.3))
    assert {name: c.passed for name, c in checks.items()} == {"map50": 1, "map50_95": 1}


def test_failing_threshold_is_reported_with_value_and_threshold():
    checks = build_checks(0.2, 0.3, per_class(a=0.5), EvaluateParams(min_map50=0.5, min_map50_95=0.1))
    failed = [name for name, c in checks.items() if not c.passed]
    assert failed == ["map50"]
    assert describe("map50", checks["map50"].model_dump()) == "map50 0.2000 < 0.5"


def test_per_class_floor_and_missing_class_measurement():
    gates = EvaluateParams(min_class_map50={"a": 0.4, "b": 0.1})
    checks = build_checks(0.5, 0.3, per_class(a=0.3, b=None), gates)
    assert checks["ap50[a]"].passed == 0 and checks["ap50[b]"].passed == 0
    assert "no validation boxes" in describe("ap50[b]", checks["ap50[b]"].model_dump())


def test_recorded_verdict_is_numbers_and_names_its_failed_checks():
    checks = build_checks(0.2, 0.3, per_class(a=0.5), EvaluateParams(min_map50=0.5, min_map50_95=0.1))
    recorded = {"checks": {name: c.model_dump() for name, c in checks.items()}}
    assert all(isinstance(v, (int, float)) for c in recorded["checks"].values() for v in c.values())
    assert failed_checks(recorded) == ["map50 0.2000 < 0.5"]


def test_floor_for_unknown_class_is_a_config_error():
    with pytest.raises(ConfigError, match=r"evaluate\.min_class_map50\.zebra"):
        build_checks(0.5, 0.3, per_class(a=0.5), EvaluateParams(min_class_map50={"zebra": 0.1}))


def test_gate_failed_names_every_failed_check():
    err = GateFailed(["map50 0.1 < 0.5", "ap50[a] 0.0 < 0.2"])
    assert "map50 0.1 < 0.5" in str(err) and "ap50[a]" in str(err) and "evaluate" in str(err)
