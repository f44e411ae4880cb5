import pytest

from stages.config import EvaluateParams
from stages.errors import ConfigError, GateFailed
from stages.evaluate import ClassMetrics, build_checks


def per_class(**ap50):
    return {
        name: ClassMetrics(instances=1 if v is not None else 0, precision=v, recall=v, ap50=v, ap50_95=v)
        for name, v in ap50.items()
    }


def test_all_gates_pass_at_or_above_thresholds():
    checks = build_checks(0.5, 0.3, per_class(a=0.5), EvaluateParams(min_map50=0.5, min_map50_95=0.3))
    assert [c.passed for c in checks] == [True, True]


def test_failing_threshold_is_reported_with_value_and_threshold():
    checks = build_checks(0.2, 0.3, per_class(a=0.5), EvaluateParams(min_map50=0.5, min_map50_95=0.1))
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == ["map50"]
    assert "0.2000 < 0.5" in failed[0].message


def test_per_class_floor_and_missing_class_measurement():
    gates = EvaluateParams(min_class_map50={"a": 0.4, "b": 0.1})
    checks = build_checks(0.5, 0.3, per_class(a=0.3, b=None), gates)
    by_name = {c.name: c for c in checks}
    assert by_name["ap50[a]"].passed is False
    assert by_name["ap50[b]"].passed is False
    assert "no validation boxes" in by_name["ap50[b]"].message


def test_floor_for_unknown_class_is_a_config_error():
    with pytest.raises(ConfigError, match=r"evaluate\.min_class_map50\.zebra"):
        build_checks(0.5, 0.3, per_class(a=0.5), EvaluateParams(min_class_map50={"zebra": 0.1}))


def test_gate_failed_names_every_failed_check():
    err = GateFailed(["map50 0.1 < 0.5", "ap50[a] 0.0 < 0.2"])
    assert "map50 0.1 < 0.5" in str(err) and "ap50[a]" in str(err) and "evaluate" in str(err)
