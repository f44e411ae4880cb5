"""No ``paths`` output can be, hold or lie in what the project cannot lose (issue 21, item 4).

Promotion renames and deletes ``paths.production``, DVC deletes every stage output before running
the stage: an output on ``.dvc``, ``.git``, the dataset or the code would wipe it.
"""

from pathlib import Path

import pytest

from stages.core.config import PathsParams, parse_params
from stages.core.errors import ConfigError


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("production", ".dvc"),
        ("production", ".dvc/cache"),
        ("production", "data"),
        ("production", "data/dataset"),
        ("production", "stages"),
        ("production", ".git/x"),
        ("production", ".git"),
        ("model", "dvc.yaml"),
        ("model", "params.yaml"),
        ("deploy_dir", "flows"),
        ("train_dir", "tests/unit"),
        ("production", "./Stages/"),
        ("production", "weights"),
        ("production", "weights/production"),
        ("engine_dir", ".dvc-storage"),  # the default local DVC remote: every pushed version
    ],
)
def test_output_on_what_the_project_needs_is_refused(key: str, value: str):
    with pytest.raises(ConfigError) as err:
        parse_params({"paths": {key: value}})
    assert err.value.key == f"paths.{key}"
    assert f"paths.{key} ({value})" in str(err.value)


def test_two_keys_on_the_same_folder_are_refused():
    with pytest.raises(ConfigError, match=r"paths\.production \(models/deploy\) overlaps paths\.deploy_dir") as err:
        parse_params({"paths": {"production": "models/deploy"}})
    assert err.value.key == "paths.production"


def test_an_output_folder_holding_another_output_is_refused():
    """Deleting ``models`` before a stage runs would take ``models/best.pt`` of another stage with it."""
    with pytest.raises(ConfigError, match=r"paths\.deploy_dir \(models\) overlaps paths\.train_dir"):
        parse_params({"paths": {"deploy_dir": "models"}})
    with pytest.raises(ConfigError, match=r"overlaps"):
        parse_params({"paths": {"production": "models/train/production"}})


def test_default_paths_pass_and_siblings_in_one_folder_are_fine():
    paths = PathsParams()
    assert paths.model == "models/best.pt" and paths.train_dir == "models/train"
    parse_params({"paths": {"production": "models/prod", "model": "models/weights/best.pt"}})


def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "data" / "dataset").mkdir(parents=True)
    (root / ".dvc").mkdir()
    (root / "models").mkdir()
    return root


def test_a_link_out_of_the_workspace_is_refused_at_resolution(tmp_path: Path):
    root, outside = workspace(tmp_path), tmp_path / "elsewhere"
    outside.mkdir()
    (root / "models" / "production").symlink_to(outside)
    paths = parse_params({}).paths
    with pytest.raises(ConfigError, match="outside the workspace") as err:
        paths.resolve("production", root)
    assert err.value.key == "paths.production"
    (root / "models" / "production").unlink()
    (root / "models").rmdir()
    (root / "models").symlink_to(outside)  # a parent folder linked out: the same
    with pytest.raises(ConfigError, match="outside the workspace") as err:
        paths.resolve("model", root)
    assert err.value.key == "paths.model"


@pytest.mark.parametrize(
    ("link", "target"),
    [("models/production", ".dvc"), ("models/production", "data"), ("models/production", "models/deploy")],
)
def test_a_link_to_what_the_project_needs_is_refused_at_resolution(tmp_path: Path, link: str, target: str):
    root = workspace(tmp_path)
    (root / link).symlink_to(root / target)
    with pytest.raises(ConfigError, match="leads through a link") as err:
        parse_params({}).paths.resolve("production", root)
    assert err.value.key == "paths.production"


def test_inputs_may_be_linked_in_from_elsewhere(tmp_path: Path):
    """A dataset on a larger disk, linked into the workspace, is only read: allowed."""
    root, disk = workspace(tmp_path), tmp_path / "disk"
    (disk / "dataset").mkdir(parents=True)
    (root / "data" / "dataset").rmdir()
    (root / "data" / "dataset").symlink_to(disk / "dataset")
    paths = parse_params({}).paths
    assert paths.resolve("dataset", root) == disk / "dataset"
    assert paths.resolve("model", root) == root.resolve() / "models" / "best.pt"
