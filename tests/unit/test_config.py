from pathlib import Path

import pydantic
import pytest
import yaml

from stages.core.config import Params, load_params, parse_params
from stages.core.errors import ConfigError
from tests.conftest import REPO


def test_repo_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train.model == "yolo11n.yaml"
    assert params.engine.required is False


def test_repo_params_file_lists_every_key():
    """No hidden defaults: every field of every section is written in params.yaml."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params().as_dict()
    assert set(data) == set(defaults)
    for section, values in defaults.items():
        assert set(data[section]) == set(values), f"params.yaml section '{section}' is missing keys"


def test_unknown_top_level_key_names_key_and_file(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "trian" in str(err.value)
    assert str(path) in str(err.value)


def test_misspelled_nested_key_is_refused(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epocs'; did you mean 'epochs'\?"):
        load_params(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trian": {}}, "unknown key 'trian'; did you mean 'train'?"),
        ({"validate": {"max_image_pixel": 1}}, "'validate.max_image_pixel'; did you mean 'max_image_pixels'?"),
        ({"paths": {"modle": "x.pt"}}, "unknown key 'paths.modle'; did you mean 'model'?"),
    ],
)
def test_unknown_key_suggests_the_closest_known_one(data, message):
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert message in str(err.value)


def test_unknown_key_without_a_close_one_gets_no_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_params({"evaluate": {"zzz": 1}})
    assert str(err.value).endswith("unknown key 'evaluate.zzz'")


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match=r"train\.imgsz"):
        parse_params({"train": {"imgsz": 100}})


def test_output_inside_dataset_is_refused():
    with pytest.raises(ConfigError, match=r"inside paths\.dataset"):
        parse_params({"paths": {"prepared": "data/dataset/prepared"}})


def test_absolute_or_escaping_paths_are_refused():
    with pytest.raises(ConfigError):
        parse_params({"paths": {"model": "/tmp/best.pt"}})
    with pytest.raises(ConfigError):
        parse_params({"paths": {"model": "../best.pt"}})


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.train.epochs = 3  # type: ignore[misc]


def test_image_pixel_limit_defaults_to_pils_own_and_must_be_positive():
    assert parse_params({}).validate_.max_image_pixels == 89_478_485
    assert parse_params({"validate": {"max_image_pixels": 1000}}).validate_.max_image_pixels == 1000
    with pytest.raises(ConfigError, match="max_image_pixels"):
        parse_params({"validate": {"max_image_pixels": 0}})
