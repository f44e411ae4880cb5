"""End to end: a VOC dataset and a COCO dataset each go through `dvc repro` with only params changes."""

from __future__ import annotations

import pytest

from stages import PIPELINE
from tests.conftest import tree_digest
from tests.e2e.workspace import Workspace
from tests.formats_fixtures import make_coco, make_voc

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("fmt", "make"), [("voc", make_voc), ("coco", make_coco)])
def test_format_runs_the_whole_chain_and_prepare_is_a_no_op_on_rerun(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, make
):
    ws = Workspace.create(tmp_path_factory.mktemp(f"ws-{fmt}"), tmp_path_factory.mktemp("prefect-home"))
    make(ws.root / "data" / "dataset", train=12, val=4, size=64)
    ws.add_data()
    before = tree_digest(ws.root / "data" / "dataset")
    ws.edit("prepare", format=fmt)

    proc, ran = ws.repro()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran == set(PIPELINE)
    class_map = ws.json("data/prepared/class_map.json")
    assert class_map["source_format"] == fmt
    assert ws.json("reports/validate.json")["ok"] is True
    assert set(ws.json("metrics/evaluate.json")["per_class"]) == {"square", "disc", "triangle"}
    assert (ws.root / "models/deploy/model.onnx").is_file()

    proc, ran = ws.repro("prepare")
    assert proc.returncode == 0 and ran == set(), "re-running prepare on unchanged input must be a DVC no-op"
    assert tree_digest(ws.root / "data" / "dataset") == before


def test_dataset_with_every_problem_kind_stops_before_training(tmp_path_factory: pytest.TempPathFactory):
    from tests.unit.test_validate_stage import corrupt

    ws = Workspace.create(tmp_path_factory.mktemp("ws-bad"), tmp_path_factory.mktemp("prefect-home"))
    gen = ws.run("-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "8", "--val", "3", "--size", "64")
    assert gen.returncode == 0, gen.stderr
    expected = corrupt(ws.root)
    ws.add_data()
    before = tree_digest(ws.root / "data" / "dataset")

    proc, ran = ws.repro()
    assert proc.returncode != 0
    assert "validate" in ran and "train" not in ran
    output = proc.stdout + proc.stderr
    assert "error: [stage 'validate'" in output and "image_truncated" in output
    codes = {p["code"] for p in ws.json("reports/validate.json")["problems"]}
    assert set(expected) <= codes
    assert not (ws.root / "models" / "best.pt").exists()
    assert tree_digest(ws.root / "data" / "dataset") == before
