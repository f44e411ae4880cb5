from pathlib import Path

import pytest

from stages.data.sample_data import SampleSpec, generate
from tests.conftest import tree_digest


def test_same_seed_same_bytes(tmp_path: Path):
    generate(SampleSpec(out=tmp_path / "a", train=4, val=2, size=64, seed=3))
    generate(SampleSpec(out=tmp_path / "b", train=4, val=2, size=64, seed=3))
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    generate(SampleSpec(out=tmp_path / "c", train=4, val=2, size=64, seed=4))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_every_image_has_boxes_inside_it(tmp_path: Path):
    generate(SampleSpec(out=tmp_path / "d", train=10, val=2, size=64, seed=0))
    for label in (tmp_path / "d" / "labels").rglob("*.txt"):
        rows = [list(map(float, line.split())) for line in label.read_text().splitlines()]
        assert rows, f"{label} has no box"
        for c, x, y, w, h in rows:
            assert c in (0, 1, 2)
            assert x - w / 2 >= 0 and x + w / 2 <= 1 and y - h / 2 >= 0 and y + h / 2 <= 1


def test_refuses_to_overwrite(tmp_path: Path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate(SampleSpec(out=tmp_path / "e"))
