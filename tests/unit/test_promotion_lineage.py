"""Production lines (issue 25, item 2): a candidate of other classes is not compared with production."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.promote import main, promotion_checks
from stages.promotion.lineage import NEW_LINE_COMMAND, differences, lineage_check

SHAPES = ["circle", "square", "triangle"]
COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train"]
EVALUATE = {"map50_95": 0.0, "gates": {"passed": 1, "failed": 0, "checks": {}}}
EXPORT_OK = {"exported": 1, "parity": {"passed": True}}


def production(classes: list[str] | None = SHAPES, **extra) -> dict:
    meta = {"version": 1, "data_version": "aaa.dir", "metrics": {"map50_95": 0.2759}, **extra}
    return meta if classes is None else {**meta, "classes": classes}


def checks_of(candidate: list[str], meta: dict, root: Path, new_line: str | None = None):
    """The checks of a candidate against production ``meta`` in workspace ``root`` (folder ``root/production``)."""
    production = root / "production"
    lineage, line = lineage_check(candidate, production, meta, "bbb.dir", new_line, workspace=root)
    compare = lineage.passed and new_line is None
    return {c.name: c for c in promotion_checks(EVALUATE, EXPORT_OK, meta, 0.0, None, lineage, compare)}, line


def test_other_classes_are_refused_with_both_named_and_the_new_line_command(tmp_path: Path):
    checks, line = checks_of(COCO, production(), tmp_path)
    refused = checks["same classes"]
    assert not refused.passed
    assert "7 vs 3 classes" in refused.message and "id 0: 'person' vs 'circle'" in refused.message
    assert "id 3: 'motorcycle' vs -" in refused.message and "(2 more)" in refused.message
    assert NEW_LINE_COMMAND in refused.message and "production-v1" in refused.message
    # mAP over other classes is not compared: the misleading "no regression 0.0000 vs 0.2759" is gone.
    assert "no regression" not in checks
    assert line.number == 1 and line.classes == COCO


def test_same_names_in_another_order_are_other_classes(tmp_path: Path):
    checks, _ = checks_of(["square", "circle", "triangle"], production(), tmp_path)
    assert not checks["same classes"].passed
    assert "3 vs 3 classes; id 0: 'square' vs 'circle'; id 1: 'circle' vs 'square'" in checks["same classes"].message


def test_same_classes_on_new_data_are_compared_and_the_data_change_recorded(tmp_path: Path):
    checks, line = checks_of(SHAPES, production(line={"number": 2, "reason": "shapes v2", "started_at": 4}), tmp_path)
    same = checks["same classes"]
    assert same.passed and "data version aaa.dir -> bbb.dir (retrained on new data)" in same.message
    assert not checks["no regression"].passed  # compared with production as before: 0.0 < 0.2759
    assert (line.number, line.reason, line.started_at) == (2, "shapes v2", 4)  # the line continues


def test_a_new_line_skips_the_comparison_and_numbers_the_line(tmp_path: Path):
    checks, line = checks_of(COCO, production(), tmp_path, new_line="coco128 instead of shapes")
    assert all(c.passed for c in checks.values()) and "no regression" not in checks
    assert "new production line 2 (coco128 instead of shapes)" in checks["same classes"].message
    assert (line.number, line.reason, line.classes) == (2, "coco128 instead of shapes", COCO)


def test_a_new_line_of_production_classes_is_refused(tmp_path: Path):
    # Otherwise --new-line would be a way around the no-regression check.
    checks, _ = checks_of(SHAPES, production(), tmp_path, new_line="just because")
    assert not checks["same classes"].passed and "promote it without --new-line" in checks["same classes"].message


def test_old_metadata_without_classes_and_no_readable_checkpoint_is_refused_with_the_command(tmp_path: Path):
    (tmp_path / "production").mkdir()
    (tmp_path / "production/model.pt").write_bytes(b"not a checkpoint")
    checks, _ = checks_of(COCO, production(classes=None), tmp_path)
    refused = checks["same classes"]
    assert not refused.passed and "records no class names" in refused.message
    assert NEW_LINE_COMMAND in refused.message and "no regression" not in checks
    new, line = checks_of(COCO, production(classes=None), tmp_path, new_line="coco128")
    assert new["same classes"].passed and line.number == 2


def test_first_promotion_has_no_line_to_compare_with(tmp_path: Path):
    lineage, line = lineage_check(COCO, tmp_path, None, "bbb.dir", workspace=tmp_path)
    assert lineage.passed and (line.number, line.reason, line.classes) == (1, None, COCO)


def test_differences_of_a_prefix():
    assert differences(["a", "b"], ["a", "b", "c"]) == "2 vs 3 classes; id 2: - vs 'c'"


@pytest.mark.parametrize("argv", [["--new-line", ""], ["--new-line", "   "]])
def test_a_new_line_needs_a_reason(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 2 and "--new-line needs a reason" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained YOLO11n checkpoint whose class names are set to the shapes (no training, no download)."""
    import torch

    from stages.core.runtime import import_ultralytics, load_checkpoint

    root = tmp_path_factory.mktemp("lineage")
    ultralytics = import_ultralytics(root)
    model = root / "production" / "model.pt"
    model.parent.mkdir()
    ultralytics.YOLO("yolo11n.yaml", task="detect").save(str(model))
    ckpt = load_checkpoint(model)
    ckpt["model"].names = dict(enumerate(SHAPES))
    torch.save(ckpt, model)
    return model


def test_old_metadata_without_classes_reads_them_from_production_checkpoint(checkpoint: Path):
    checks, _ = checks_of(SHAPES, production(classes=None), checkpoint.parent.parent)
    assert checks["same classes"].passed and "read from its model.pt" in checks["same classes"].message
    assert "no regression" in checks  # same classes: compared as before
    other, _ = checks_of(COCO, production(classes=None), checkpoint.parent.parent)
    assert not other["same classes"].passed and "id 0: 'person' vs 'circle'" in other["same classes"].message


@pytest.mark.parametrize(
    ("argv", "runner", "reason"),
    [
        (["--new-line", "  coco128 instead of the shapes "], "run_locked", "coco128 instead of the shapes"),
        ([], "run_locked", None),
        (["--recover"], "recover_locked", None),
    ],
)
def test_the_cli_passes_the_new_line_reason_to_the_promotion(
    argv: list[str], runner: str, reason: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import stages.promote as promote
    from tests.conftest import REPO

    params = tmp_path / "params.yaml"
    params.write_bytes((REPO / "params.yaml").read_bytes())
    seen = []
    monkeypatch.setattr(promote, runner, seen.append)
    assert main([*argv, "--params", str(params)]) == 0
    assert len(seen) == 1 and seen[0].new_line == reason
    assert seen[0].data_yaml == tmp_path / "data/prepared/data.yaml"
