"""VOC and COCO ingestion: conversion, stable class maps, format detection, problems named by source."""

import json
from pathlib import Path

import pytest
import yaml

from stages import prepare, validate
from stages.core.config import parse_params
from stages.core.errors import DatasetError, ValidationFailed
from stages.data.formats import detect_format
from tests.conftest import tree_digest
from tests.formats_fixtures import make_coco, make_voc


def run_prepare(root: Path, **prepare_params):
    params = parse_params({"prepare": prepare_params, "validate": {"workers": 1}})
    result = prepare.run(prepare.PrepareConfig.from_params(params, root))
    return params, result


def labels(root: Path, split: str) -> dict[str, list[list[float]]]:
    out = {}
    for f in sorted((root / "data" / "prepared" / "labels" / split).glob("*.txt")):
        out[f.stem] = [[float(v) for v in line.split()] for line in f.read_text().splitlines()]
    return out


@pytest.mark.parametrize("make", [make_voc, make_coco])
def test_voc_and_coco_convert_to_the_same_labels_as_the_yolo_source(tmp_path: Path, make):
    from stages.data.sample_data import SampleSpec, generate

    generate(SampleSpec(out=tmp_path / "yolo" / "data" / "dataset", train=8, val=4, size=64, seed=0))
    run_prepare(tmp_path / "yolo")
    make(tmp_path / "other" / "data" / "dataset")
    before = tree_digest(tmp_path / "other" / "data" / "dataset")
    # VOC has no class list of its own: give the order (by default names are sorted).
    order = {"classes": ["square", "disc", "triangle"]} if make is make_voc else {}
    params, result = run_prepare(tmp_path / "other", **order)
    assert result.format == make.__name__.removeprefix("make_")
    assert result.names == ["square", "disc", "triangle"]
    assert result.split_source == "dataset" and result.splits["train"].images == 8
    for split in ("train", "val"):
        ours, reference = labels(tmp_path / "other", split), labels(tmp_path / "yolo", split)
        assert ours.keys() == reference.keys()
        for stem, rows in ours.items():
            flat, expected = [v for r in rows for v in r], [v for r in reference[stem] for v in r]
            assert flat == pytest.approx(expected, abs=2e-4), stem
    report = validate.run(validate.ValidateConfig.from_params(params, tmp_path / "other"))
    assert report.ok and report.errors == 0
    assert tree_digest(tmp_path / "other" / "data" / "dataset") == before


def test_coco_category_ids_map_to_contiguous_ids_in_id_order(tmp_path: Path):
    make_coco(tmp_path / "data" / "dataset")
    run_prepare(tmp_path)
    class_map = json.loads((tmp_path / "data" / "prepared" / "class_map.json").read_text())
    assert [(c["id"], c["name"], c["source"]) for c in class_map["classes"]] == [
        (0, "square", "category 10"),
        (1, "disc", "category 20"),
        (2, "triangle", "category 30"),
    ]


def test_voc_class_order_can_be_fixed_in_params(tmp_path: Path):
    make_voc(tmp_path / "data" / "dataset")
    _p, result = run_prepare(tmp_path, classes=["triangle", "square", "disc"])
    assert result.names == ["triangle", "square", "disc"]
    _p, default = run_prepare(tmp_path)
    assert default.names == ["disc", "square", "triangle"]  # sorted when not given


def test_voc_problems_name_the_xml_file_and_line(tmp_path: Path):
    ds = make_voc(tmp_path / "data" / "dataset")
    xml = ds / "Annotations" / "train_00001.xml"
    text = xml.read_text()
    text = text.replace("<name>", "<name>zebra", 1)  # unknown class in the first object
    xml.write_text(text)
    first_object_line = text.splitlines().index("  <object>") + 1
    (ds / "Annotations" / "train_00002.xml").write_text("<annotation><unclosed>")
    (ds / "JPEGImages" / "train_00003.jpg").unlink()
    wide = ds / "Annotations" / "train_00004.xml"
    wide.write_text(wide.read_text().replace("<xmax>", "<xmax>9", 1))  # far beyond the image width
    params, _ = run_prepare(tmp_path, classes=["square", "disc", "triangle"])
    with pytest.raises(ValidationFailed):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    problems = json.loads((tmp_path / "reports" / "validate.json").read_text())["problems"]
    found = {(p["code"], p["file"], p["line"]) for p in problems}
    assert ("class_out_of_range", "data/dataset/Annotations/train_00001.xml", first_object_line) in found
    assert any(c == "annotation_malformed" and f.endswith("train_00002.xml") for c, f, _ in found)
    assert any(c == "image_missing" and f.endswith("train_00003.xml") for c, f, _ in found)
    converted = [p for p in problems if p["file"].endswith("train_00004.xml")]
    assert converted and converted[0]["code"] in {"box_out_of_bounds", "box_mostly_outside"}
    assert converted[0]["line"] is not None and converted[0]["message"].startswith("object 1:")


def test_coco_problems_name_the_json_file_and_annotation(tmp_path: Path):
    ds = make_coco(tmp_path / "data" / "dataset")
    path = ds / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["iscrowd"] = 1
    data["annotations"].append({"id": 999, "image_id": 12345, "category_id": 10, "bbox": [1, 1, 5, 5]})
    path.write_text(json.dumps(data))
    params, _ = run_prepare(tmp_path)
    with pytest.raises(ValidationFailed):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    problems = json.loads((tmp_path / "reports" / "validate.json").read_text())["problems"]
    by_code = {p["code"]: p for p in problems}
    assert by_code["class_out_of_range"]["file"] == "data/dataset/annotations/instances_train2017.json"
    assert "annotation id 1" in by_code["class_out_of_range"]["message"]
    assert by_code["annotation_crowd_skipped"]["severity"] == "warning"
    assert "image_id 12345" in by_code["annotation_unknown_image"]["message"]


def test_problems_in_converted_coco_boxes_name_the_annotation_and_its_image(tmp_path: Path):
    ds = make_coco(tmp_path / "data" / "dataset")
    path = ds / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    images = {image["id"]: image["file_name"] for image in data["images"]}
    broken = data["annotations"][:2]
    for ann in broken:
        ann["bbox"] = [500, 500, 10, 10]  # far outside a 64 px image
    path.write_text(json.dumps(data))
    params, _ = run_prepare(tmp_path)
    with pytest.raises(ValidationFailed):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    problems = json.loads((tmp_path / "reports" / "validate.json").read_text())["problems"]
    found = sorted((p["ref"], Path(p["image"]).name) for p in problems if p["code"] == "box_out_of_bounds")
    expected = sorted((f"annotation id {a['id']}", images[a["image_id"]]) for a in broken)
    assert found == expected
    # The summary's examples tell the two apart, instead of naming the same JSON file twice.
    summary = (tmp_path / "reports" / "validate.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| box_out_of_bounds "))
    for ref, image in expected:
        assert f"{ref} (image `{image}`)" in row


def test_format_detection(tmp_path: Path):
    assert detect_format(make_voc(tmp_path / "voc")) == "voc"
    assert detect_format(make_coco(tmp_path / "coco")) == "coco"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        detect_format(tmp_path / "empty")
    both = make_voc(tmp_path / "both")
    (both / "instances_train.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"ambiguous.*voc.*coco") as err:
        detect_format(both)
    assert err.value.key == "prepare.format"


def test_explicit_format_that_does_not_match_fails_clearly(tmp_path: Path):
    make_coco(tmp_path / "data" / "dataset")
    with pytest.raises(DatasetError, match="VOC dataset needs"):
        run_prepare(tmp_path, format="voc")


def _make_yolo(out: Path) -> Path:
    from stages.data.sample_data import SampleSpec, generate

    generate(SampleSpec(out=out, train=8, val=4, size=64, seed=0))
    return out


@pytest.mark.parametrize("make", [_make_yolo, make_voc, make_coco], ids=["yolo", "voc", "coco"])
def test_prepared_data_yaml_is_the_same_shape_for_every_format(tmp_path: Path, make):
    make(tmp_path / "data" / "dataset")
    run_prepare(tmp_path, classes=["square", "disc", "triangle"] if make is make_voc else [])
    data = yaml.safe_load((tmp_path / "data" / "prepared" / "data.yaml").read_text())
    assert data == {
        "train": "images/train",
        "val": "images/val",
        "names": {0: "square", 1: "disc", 2: "triangle"},
    }
    for split in ("train", "val"):  # the folders it names hold the images and their labels
        images = sorted(f.stem for f in (tmp_path / "data" / "prepared" / data[split]).iterdir())
        labels = sorted(f.stem for f in (tmp_path / "data" / "prepared" / "labels" / split).glob("*.txt"))
        assert images and images == labels


def test_voc_difficult_objects_are_left_out_unless_asked_for(tmp_path: Path):
    ds = make_voc(tmp_path / "data" / "dataset")
    xml = sorted((ds / "Annotations").glob("*.xml"))[0]
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    label = tmp_path / "data" / "prepared" / "labels" / "train" / f"{xml.stem}.txt"
    run_prepare(tmp_path, classes=["square", "disc", "triangle"])
    without = label.read_text().splitlines()
    run_prepare(tmp_path, classes=["square", "disc", "triangle"], include_difficult=True)
    with_difficult = label.read_text().splitlines()
    assert len(with_difficult) == len(without) + 1
    assert set(without) < set(with_difficult)


def edit_coco(ds: Path, change) -> None:
    path = ds / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda d: d["images"][0].update(id="x"), "annotation_malformed"),
        (lambda d: d["images"].append(d["images"][0]), "annotation_malformed"),
        (lambda d: d["images"].append(["not", "an", "object"]), "annotation_malformed"),
        (lambda d: d["annotations"].append(17), "annotation_malformed"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 10**400, 4]), "label_not_number"),
        (lambda d: d["annotations"][0].update(bbox="1234"), "label_not_number"),
        (lambda d: d["annotations"][0].update(image_id=float("inf")), "annotation_unknown_image"),
        (lambda d: d["annotations"][0].update(category_id=[10]), "class_out_of_range"),
        (lambda d: d["images"][0].update(width=0), "label_not_number"),
        (lambda d: d["images"][0].update(file_name=["a.jpg"]), "path_outside_dataset"),
        (lambda d: d["images"][0].update(file_name="a\x00.jpg"), "path_outside_dataset"),
        (lambda d: d["images"][0].update(file_name="x" * 400 + ".jpg"), "image_missing"),
    ],
)
def test_coco_values_of_any_type_are_problems_of_their_record(tmp_path: Path, change, code):
    edit_coco(make_coco(tmp_path / "data" / "dataset"), change)
    run_prepare(tmp_path)
    problems = json.loads((tmp_path / "data" / "prepared" / "source_problems.json").read_text())
    assert code in {p["code"] for p in problems}
    assert {p["file"] for p in problems} == {"data/dataset/annotations/instances_train2017.json"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[]", "expected a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"images": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"images": {}}', "'images' must be a list"),
        (b'{"categories": [{"name": "a"}]}', "needs an integer 'id'"),
        (b'{"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "appears twice"),
        (b'{"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}', "unique"),
    ],
)
def test_coco_file_of_the_wrong_shape_is_a_dataset_error(tmp_path: Path, content: bytes, message: str):
    ds = make_coco(tmp_path / "data" / "dataset")
    for split in ("train", "val"):
        (ds / "annotations" / f"instances_{split}2017.json").write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        run_prepare(tmp_path)


def test_a_crash_while_reading_one_annotation_file_is_a_problem_of_that_file(tmp_path: Path, monkeypatch):
    from stages.data.formats import coco

    make_coco(tmp_path / "data" / "dataset")
    real = coco._boxes

    def flaky(data, annotation, *args):
        if "train" in annotation.name:
            raise ZeroDivisionError("planted")
        return real(data, annotation, *args)

    monkeypatch.setattr(coco, "_boxes", flaky)
    params, result = run_prepare(tmp_path)
    problems = json.loads((tmp_path / "data" / "prepared" / "source_problems.json").read_text())
    assert [(p["code"], p["file"]) for p in problems] == [
        ("check_crashed", "data/dataset/annotations/instances_train2017.json")
    ]
    assert "ZeroDivisionError: planted" in problems[0]["message"]
    assert result.splits["val"].images == 4 and "train" not in result.splits
    with pytest.raises(ValidationFailed, match="check_crashed"):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))


@pytest.mark.parametrize(
    "xml",
    [
        b"\xff\xfe<annotation/>",
        b"<annotation>" * 5000,
        b'<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
        b'<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">]><annotation><filename>&g;</filename></annotation>',
        b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]><annotation><filename>&x;</filename></annotation>',
    ],
    ids=["not-utf8", "deep", "entity-expansion", "external-entity"],
)
def test_hostile_voc_xml_is_an_annotation_problem(tmp_path: Path, xml: bytes):
    ds = make_voc(tmp_path / "data" / "dataset", train=2, val=1)
    (ds / "Annotations" / "train_00000.xml").write_bytes(xml)
    run_prepare(tmp_path, classes=["square", "disc", "triangle"])
    problems = json.loads((tmp_path / "data" / "prepared" / "source_problems.json").read_text())
    assert [p["file"] for p in problems] == ["data/dataset/Annotations/train_00000.xml"]
    assert problems[0]["code"] in {"annotation_malformed", "image_missing", "path_outside_dataset"}
