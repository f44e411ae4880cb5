"""Values made for the sample still in place on other data: warned by validate, noted on the model card."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from stages import prepare, report, validate
from stages.core.config import load_params, set_dotted
from stages.data import sample_defaults
from stages.data.sample_data import CLASSES, SampleSpec, generate
from tests.conftest import REPO

OTHER = ["cat", "dog", "bird"]
SECTION = "### Defaults made for the sample"


def _committed() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_table_holds_the_committed_params_values() -> None:
    """The values listed as made for the sample are the ones params.yaml ships with (kept in step)."""
    values = sample_defaults.current_values(load_params(REPO / "params.yaml"))
    assert values == {key: made for key, (made, _) in sample_defaults.SAMPLE_MADE.items()}


def test_other_data_with_the_committed_params_lists_every_key() -> None:
    values = sample_defaults.current_values(load_params(REPO / "params.yaml"))
    found = sample_defaults.in_place(OTHER, values)
    assert [d.key for d in found] == ["train.model", "evaluate.min_map50", "evaluate.min_map50_95", "report.title"]
    assert any("make weights" in d.advice for d in found)


def test_the_sample_itself_gets_no_warning() -> None:
    values = sample_defaults.current_values(load_params(REPO / "params.yaml"))
    assert sample_defaults.in_place(list(CLASSES), values) == []
    # Same names in another order, or one more class, are other data.
    assert sample_defaults.in_place(list(reversed(CLASSES)), values)
    assert sample_defaults.in_place([*CLASSES, "star"], values)


def test_changed_values_are_not_listed() -> None:
    values = sample_defaults.current_values(load_params(REPO / "params.yaml"))
    values |= {"train.model": "weights/yolo11n.pt", "report.title": "Pallet detector", "evaluate.min_map50": 0.5}
    assert [d.key for d in sample_defaults.in_place(OTHER, values)] == ["evaluate.min_map50_95"]


def _validate(root: Path, names: list[str], changes: dict) -> tuple[str, bytes]:
    """Generate, rename the classes, prepare and validate with the committed params plus ``changes``."""
    dataset = root / "data" / "dataset"
    if not dataset.exists():
        generate(SampleSpec(out=dataset, train=6, val=3, size=64, seed=0))
        meta = yaml.safe_load((dataset / "data.yaml").read_text())
        meta["names"] = dict(enumerate(names))
        (dataset / "data.yaml").write_text(yaml.safe_dump(meta))
    data = _committed()
    data["validate"]["workers"] = 1
    for key, value in changes.items():
        set_dotted(data, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    params = load_params(root / "params.yaml")
    prepare.run(prepare.PrepareConfig.from_params(params, root))
    validate.run(validate.ValidateConfig.from_params(params, root))
    return (root / "reports" / "validate.md").read_text(), (root / "reports" / "validate.json").read_bytes()


def test_validate_warns_on_other_data_in_summary_and_log_not_in_its_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.validate"):
        summary, report_json = _validate(tmp_path, OTHER, {})
    assert SECTION in summary
    for key in sample_defaults.KEYS:
        assert f"`{key}: " in summary
    warned = [r.getMessage() for r in caplog.records if "made for the sample" in r.getMessage()]
    assert len(warned) == len(sample_defaults.KEYS)
    # Fixing the values changes the summary, never validate.json (train depends on it: no retraining).
    fixed = {"train.model": "weights/yolo11n.pt", "report.title": "Animals", "evaluate.min_map50": 0.4}
    fixed["evaluate.min_map50_95"] = 0.2
    summary_fixed, report_json_fixed = _validate(tmp_path, OTHER, fixed)
    assert SECTION not in summary_fixed
    assert report_json_fixed == report_json


def test_validate_on_the_sample_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.validate"):
        summary, _ = _validate(tmp_path, list(CLASSES), {})
    assert SECTION not in summary
    assert not [r for r in caplog.records if "made for the sample" in r.getMessage()]


CARD = "# Model card: YOLO detector (sample shapes dataset)\n\n| | |\n|---|---|\n| Data version (DVC) | `x` |\n"


def test_report_notes_the_leftovers_under_the_card_title() -> None:
    values = sample_defaults.current_values(load_params(REPO / "params.yaml"))
    card = report.with_sample_note(CARD, OTHER, values)
    lines = card.splitlines()
    assert lines[0] == "# Model card: YOLO detector (sample shapes dataset)"
    assert lines[2].startswith("> **Note:** params made for the sample dataset are still in place:")
    assert "`report.title`" in lines[2] and "`train.model`" in lines[2]
    assert card.endswith(CARD.partition("\n\n")[2])  # the rest of the card unchanged
    assert report.with_sample_note(CARD, list(CLASSES), values) == CARD


def test_report_config_carries_the_values(tmp_path: Path) -> None:
    cfg = report.ReportConfig.from_params(load_params(REPO / "params.yaml"), tmp_path)
    assert cfg.sample_values["report.title"] == "YOLO detector (sample shapes dataset)"
