from stages.promote import promotion_checks


def evaluate(map50_95=0.3, passed=True):
    checks = {"map50": {"value": 0.5 if passed else 0.1, "threshold": 0.5, "passed": int(passed)}}
    return {"map50_95": map50_95, "gates": {"passed": int(passed), "failed": int(not passed), "checks": checks}}


EXPORT_OK = {"exported": 1, "parity": {"passed": True}}


def by_name(checks):
    return {c.name: c for c in checks}


def test_first_promotion_needs_only_gate_and_parity():
    checks = by_name(promotion_checks(evaluate(), EXPORT_OK, None, 0.0))
    assert all(c.passed for c in checks.values())
    assert checks["no regression"].message == "no production model yet"


def test_failed_gate_and_parity_are_refused_with_reasons():
    checks = by_name(promotion_checks(evaluate(passed=False), {"exported": 1, "parity": {"passed": False}}, None, 0.0))
    assert not checks["evaluation gate"].passed and "map50 0.1000 < 0.5" in checks["evaluation gate"].message
    assert not checks["export parity"].passed and "beyond tolerance" in checks["export parity"].message


def test_nothing_exported_is_refused():
    checks = by_name(promotion_checks(evaluate(passed=False), {"exported": 0}, None, 0.0))
    assert not checks["export parity"].passed and checks["export parity"].message == "nothing was exported"


def test_a_candidate_is_production_only_when_its_model_files_match(tmp_path):
    from stages.core.common import file_sha256
    from stages.promote import already_in_production

    files = {"model.pt": tmp_path / "model.pt", "model.onnx": tmp_path / "model.onnx"}
    files["model.pt"].write_bytes(b"weights")
    files["model.onnx"].write_bytes(b"graph")
    production = {"version": 2, "files": {name: file_sha256(path) for name, path in files.items()}}
    assert already_in_production(files, production)
    assert not already_in_production(files, None)
    files["model.onnx"].write_bytes(b"another graph")
    assert not already_in_production(files, production)


def test_regression_against_production_respects_the_allowed_drop():
    production = {"version": 3, "metrics": {"map50_95": 0.30}}
    assert by_name(promotion_checks(evaluate(0.30), EXPORT_OK, production, 0.0))["no regression"].passed
    worse = by_name(promotion_checks(evaluate(0.28), EXPORT_OK, production, 0.0))["no regression"]
    assert not worse.passed and "production v3" in worse.message
    assert by_name(promotion_checks(evaluate(0.28), EXPORT_OK, production, 0.05))["no regression"].passed


def test_an_fp32_onnx_model_over_its_accuracy_limit_is_never_promoted():
    deployable = {"onnx-fp32": {"deployable": 1, "drop_map50_95": 0.001, "max_drop": 0.002}}
    assert by_name(promotion_checks(evaluate(), EXPORT_OK, None, 0.0, deployable))["onnx-fp32 deployable"].passed
    over = {"onnx-fp32": {"deployable": 0, "drop_map50_95": 0.004, "max_drop": 0.002}}
    check = by_name(promotion_checks(evaluate(), EXPORT_OK, None, 0.0, over))["onnx-fp32 deployable"]
    assert not check.passed and "0.004" in check.message and "deploy.max_drop.fp32" in check.message
    empty = by_name(promotion_checks(evaluate(), EXPORT_OK, None, 0.0, {}))["onnx-fp32 deployable"]
    assert not empty.passed and empty.message == "nothing was exported"
