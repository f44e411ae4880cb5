import os
from pathlib import Path

import pytest
import yaml

from stages.core.config import parse_params
from stages.core.errors import ConfigError, DatasetError
from stages.data.prepared_output import checked_target, hash_split
from stages.data.sample_data import SampleSpec, generate
from stages.prepare import PrepareConfig, run
from tests.conftest import tree_digest


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=6, val=3, size=64, seed=1))
    return tmp_path


def config(root: Path, **prepare) -> PrepareConfig:
    return PrepareConfig.from_params(parse_params({"prepare": prepare} if prepare else {}), root)


def test_prepare_links_images_and_writes_a_portable_data_yaml(dataset: Path):
    before = tree_digest(dataset / "data" / "dataset")
    result = run(config(dataset))
    prepared = dataset / "data" / "prepared"
    data = yaml.safe_load((prepared / "data.yaml").read_text())
    assert "path" not in data and "download" not in data  # no machine path: the workspace may move
    assert str(dataset) not in (prepared / "data.yaml").read_text()
    assert data["names"] == {0: "square", 1: "disc", 2: "triangle"}
    assert result.splits["train"].images == 6 and result.splits["val"].images == 3
    image = next((prepared / "images" / "train").iterdir())
    assert image.is_symlink()
    assert image.resolve().is_relative_to((dataset / "data" / "dataset").resolve())
    assert tree_digest(dataset / "data" / "dataset") == before


@pytest.mark.parametrize(("mode", "same_inode"), [("copy", False), ("hardlink", True)])
def test_copy_and_hardlink_modes(dataset: Path, mode: str, same_inode: bool):
    result = run(config(dataset, link=mode))
    assert result.link == mode  # no fallback on this filesystem
    source = dataset / "data" / "dataset" / "images" / "val"
    prepared = sorted((dataset / "data" / "prepared" / "images" / "val").iterdir())
    assert prepared
    for image in prepared:
        original = source / image.name
        assert not image.is_symlink() and image.read_bytes() == original.read_bytes()
        # A copy is a file of its own; a hard link is the dataset's file under a second name.
        assert (image.stat().st_ino == original.stat().st_ino) is same_inode


def test_hash_split_is_stable_and_independent_of_other_files():
    names = [f"img_{i}.jpg" for i in range(200)]
    first = {n: hash_split(n, 0, 0.2) for n in names}
    more = {n: hash_split(n, 0, 0.2) for n in [*names, *(f"new_{i}.jpg" for i in range(100))]}
    assert all(more[n] == first[n] for n in names)
    share = sum(v == "val" for v in first.values()) / len(first)
    assert 0.1 < share < 0.3
    assert {n: hash_split(n, 1, 0.2) for n in names} != first


def test_dataset_without_val_split_is_split_by_hash(dataset: Path):
    source = dataset / "data" / "dataset" / "data.yaml"
    data = yaml.safe_load(source.read_text())
    del data["val"]
    source.write_text(yaml.safe_dump(data))
    result = run(config(dataset, val_fraction=0.5))
    assert result.split_source == "hash"
    assert sum(s.images for s in result.splits.values()) == 6


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"download": "https://example.com/data.zip"}, "'download' is refused"),
        ({"extra_key": 1}, "unknown key"),
        ({"names": {0: "a", 2: "b"}}, "without gaps"),
        ({"val": "../../outside"}, "outside the dataset"),
        ({"val": "/etc"}, "outside the dataset"),
        ({"val": "images\\..\\..\\outside"}, "outside the dataset"),
        ({"path": "../.."}, "outside the dataset"),
        ({"path": 5}, "'path' must be a folder"),
        ({"names": {0: "a", 1: "b", "01": "c"}}, "without gaps or repeats"),
        ({"names": {float("inf"): "a"}}, "must be integers"),
    ],
)
def test_bad_source_data_yaml_is_refused(dataset: Path, edit, message):
    source = dataset / "data" / "dataset" / "data.yaml"
    data = yaml.safe_load(source.read_text())
    data.update(edit)
    source.write_text(yaml.safe_dump(data))
    with pytest.raises(DatasetError, match=message) as err:
        run(config(dataset))
    assert "data.yaml" in str(err.value)


def test_missing_dataset_says_what_to_do(tmp_path: Path):
    with pytest.raises(DatasetError, match="sample-data"):
        run(config(tmp_path))


def test_hash_split_takes_file_names_that_are_not_utf8():
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a lone surrogate in Python
    assert hash_split(name, 0, 0.5) in {"train", "val"}
    assert hash_split("café.jpg", 0, 0.5) == hash_split("café.jpg", 0, 0.5)


def test_prepared_folder_holding_other_files_is_never_emptied(dataset: Path):
    run(config(dataset))
    notes = dataset / "data" / "prepared" / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(DatasetError, match="did not write") as err:
        run(config(dataset))
    assert err.value.key == "paths.prepared"
    assert notes.read_text() == "mine"


def test_prepared_folder_holding_the_dataset_is_refused(dataset: Path):
    """paths.prepared: data would delete data/dataset, the input, before writing into it."""
    before = tree_digest(dataset / "data" / "dataset")
    with pytest.raises(ConfigError, match=r"paths\.prepared \(data\) holds paths\.dataset") as err:
        run(PrepareConfig.from_params(parse_params({"paths": {"prepared": "data"}}), dataset))
    assert err.value.key == "paths.prepared"
    # The same through a link: data/prepared pointing at the dataset is refused when resolved.
    (dataset / "data" / "prepared").symlink_to(dataset / "data" / "dataset")
    with pytest.raises(ConfigError, match=r"overlaps paths\.dataset"):
        run(PrepareConfig.from_params(parse_params({}), dataset))
    assert tree_digest(dataset / "data" / "dataset") == before


def test_checked_target_follows_links_of_existing_folders(tmp_path: Path):
    prepared, elsewhere = tmp_path / "prepared", tmp_path / "elsewhere"
    (prepared / "images").mkdir(parents=True)
    elsewhere.mkdir()
    (prepared / "images" / "train").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match=r"outside paths\.prepared"):
        checked_target(prepared, prepared / "images" / "train" / "a.jpg")
    with pytest.raises(DatasetError, match=r"outside paths\.prepared"):
        checked_target(prepared, prepared)


def test_a_moved_workspace_keeps_working(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """Copied or moved after prepare: our readers and Ultralytics' own resolve the data in its new place."""
    import shutil

    from stages.core.runtime import import_ultralytics
    from stages.data.datasets import read_prepared_yaml, split_dirs

    run(config(dataset))
    moved = tmp_path_factory.mktemp("moved") / "ws"
    shutil.move(dataset, moved)  # the prepared links are relative: they move along
    data_yaml = moved / "data" / "prepared" / "data.yaml"
    images, _labels = split_dirs(read_prepared_yaml(data_yaml))["val"]
    assert images == (moved / "data" / "prepared" / "images" / "val").resolve()
    assert len(list(images.iterdir())) == 3 and all(p.resolve().is_file() for p in images.iterdir())

    import_ultralytics(moved)
    from ultralytics.data.utils import check_det_dataset

    resolved = check_det_dataset(str(data_yaml), autodownload=False)
    assert Path(resolved["val"]) == images and Path(resolved["train"]).is_relative_to(moved.resolve())


def test_a_data_yaml_from_an_older_prepare_is_refused_with_the_fix(dataset: Path):
    from stages.data.datasets import read_prepared_yaml

    run(config(dataset))
    data_yaml = dataset / "data" / "prepared" / "data.yaml"
    data_yaml.write_text("path: /somewhere/else\n" + data_yaml.read_text())
    with pytest.raises(DatasetError, match=r"dvc repro --force prepare"):
        read_prepared_yaml(data_yaml)
