from stages.promote import promotion_checks


def evaluate(map50_95=0.3, passed=True):
    checks = [{"name": "map50", "passed": passed, "message": "map50 0.1000 < 0.5" if not passed else "ok"}]
    return {"map50_95": map50_95, "gate": {"passed": passed, "checks": checks}}


EXPORT_OK = {"parity": {"passed": True}}


def by_name(checks):
    return {c.name: c for c in checks}


def test_first_promotion_needs_only_gate_and_parity():
    checks = by_name(promotion_checks(evaluate(), EXPORT_OK, None, 0.0))
    assert all(c.passed for c in checks.values())
    assert checks["no regression"].message == "no production model yet"


def test_failed_gate_and_parity_are_refused_with_reasons():
    checks = by_name(promotion_checks(evaluate(passed=False), {"parity": {"passed": False}}, None, 0.0))
    assert not checks["evaluation gate"].passed and "map50 0.1000 < 0.5" in checks["evaluation gate"].message
    assert not checks["export parity"].passed


def test_regression_against_production_respects_the_allowed_drop():
    production = {"version": 3, "metrics": {"map50_95": 0.30}}
    assert by_name(promotion_checks(evaluate(0.30), EXPORT_OK, production, 0.0))["no regression"].passed
    worse = by_name(promotion_checks(evaluate(0.28), EXPORT_OK, production, 0.0))["no regression"]
    assert not worse.passed and "production v3" in worse.message
    assert by_name(promotion_checks(evaluate(0.28), EXPORT_OK, production, 0.05))["no regression"].passed
