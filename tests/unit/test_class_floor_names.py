"""A typo in ``evaluate.min_class_map50`` is refused before the validator runs, with a did-you-mean (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages import evaluate
from stages.core.config import check_class_floors, parse_params
from stages.core.errors import ConfigError

NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light"]


def test_unknown_class_floor_is_refused_before_validation_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    params = parse_params({"evaluate": {"min_class_map50": {"person": 0.1, "traffic lite": 0.2}}})
    cfg = evaluate.EvaluateConfig.from_params(params, tmp_path)
    cfg.model.parent.mkdir(parents=True)
    cfg.model.write_bytes(b"weights")
    cfg.data_yaml.parent.mkdir(parents=True)
    cfg.data_yaml.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": NAMES}))

    def no_validation(_workspace: Path):
        raise AssertionError("the validator started before the floors were checked")

    monkeypatch.setattr(evaluate, "import_ultralytics", no_validation)
    with pytest.raises(ConfigError) as err:
        evaluate.run(cfg)
    message = str(err.value)
    assert "evaluate.min_class_map50.traffic lite" in message
    assert "did you mean 'traffic light'?" in message
    assert "10 classes, named in data/prepared/data.yaml" in message
    assert "motorcycle" not in message  # not every name listed


def test_no_close_name_says_where_the_names_are():
    with pytest.raises(ConfigError, match=r"unknown class 'zebra' \(3 classes\)"):
        check_class_floors({"zebra": 0.1}, ["person", "car", "bus"])


def test_a_floor_typo_stops_train_before_it_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Checked with the other params where the names first exist: before training, not an hour later."""
    from stages import train

    params = parse_params({"evaluate": {"min_class_map50": {"traffic lite": 0.2}}})
    cfg = train.TrainConfig.from_params(params, tmp_path)
    cfg.data_yaml.parent.mkdir(parents=True)
    cfg.data_yaml.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": NAMES}))

    def no_training(_workspace: Path):
        raise AssertionError("training started before the floors were checked")

    monkeypatch.setattr(train, "import_ultralytics", no_training)
    with pytest.raises(ConfigError, match=r"did you mean 'traffic light'\?") as err:
        train.run(cfg)
    assert err.value.key == "evaluate.min_class_map50.traffic lite"
