"""Crafted datasets: nothing a dataset names is read from outside it, nothing is written outside
``paths.prepared`` and ``reports/``, and no input crashes ``prepare`` or ``validate``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from stages import prepare, validate
from stages.core.config import parse_params
from stages.core.errors import DatasetError, ValidationFailed
from stages.core.runtime import image_pixel_limit
from stages.data import prepared_output
from stages.data.sample_data import SampleSpec, generate
from tests.conftest import REPO, tree_digest, venv_env
from tests.formats_fixtures import make_coco, make_voc, tree_listing

BOMB_SIDE = 20_000


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20000x20000 PNG of about 50 KB: 400 megapixels once decoded (PIL used to refuse it with a traceback)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path, optimize=True)
    return path


def run_stages(root: Path, **validate_params) -> tuple[dict, list[dict]]:
    """Run ``prepare`` then ``validate``; returns validate's report and prepare's source problems."""
    params = parse_params({"validate": {"workers": 1, **validate_params}})
    prepare.run(prepare.PrepareConfig.from_params(params, root))
    with contextlib.suppress(ValidationFailed):  # the report says why; the tests read it
        validate.run(validate.ValidateConfig.from_params(params, root))
    report = json.loads((root / "reports" / "validate.json").read_text())
    source = json.loads((root / "data" / "prepared" / "source_problems.json").read_text())
    return report, source


def outputs(root: Path) -> tuple[Path, ...]:
    return root / "data" / "prepared", root / "reports"


def links_leaving(folder: Path, dataset: Path) -> list[Path]:
    """Prepared files that are, or point to, something outside ``dataset`` (data.yaml and friends aside)."""
    leaving = []
    for path in folder.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(dataset.resolve()):
            leaving.append(path)
    return leaving


def plant_secret(tmp_path: Path) -> Path:
    """An image outside the workspace, where a crafted path will point."""
    secret = tmp_path / "secret" / "stolen.jpg"
    secret.parent.mkdir()
    generate(SampleSpec(out=tmp_path / "donor", train=1, val=1, size=32, seed=5))
    shutil.copy(next((tmp_path / "donor" / "images" / "train").iterdir()), secret)
    shutil.rmtree(tmp_path / "donor")
    return secret


# From images/train2017/ five levels up is tmp_path (images, dataset, data, ws, tmp_path).
COCO_ESCAPES = [
    "../../../../../secret/stolen.jpg",
    "ABSOLUTE",
    "images/../../../../../../secret/stolen.jpg",
    "C:/secret/stolen.jpg",
    "C:stolen.jpg",
    "..\\..\\..\\..\\..\\secret\\stolen.jpg",
    "\\\\server\\share\\stolen.jpg",
]


@pytest.mark.parametrize("index", [0, 1], ids=["first-image", "later-image"])
@pytest.mark.parametrize("value", COCO_ESCAPES)
def test_coco_file_name_leaving_the_dataset_is_reported_and_never_read(tmp_path: Path, value: str, index: int):
    secret = plant_secret(tmp_path)
    value = str(secret) if value == "ABSOLUTE" else value
    root = tmp_path / "ws"
    ds = make_coco(root / "data" / "dataset")
    annotation = ds / "annotations" / "instances_train2017.json"
    data = json.loads(annotation.read_text())
    image_id = data["images"][index]["id"]
    data["images"][index]["file_name"] = value
    annotation.write_text(json.dumps(data))
    before_input, before_all = tree_digest(ds), tree_listing(tmp_path, outputs(root))

    report, source = run_stages(root)

    escaped = [p for p in source if p["code"] == "path_outside_dataset"]
    assert len(escaped) == 1, source
    assert escaped[0]["file"] == "data/dataset/annotations/instances_train2017.json"
    assert f"image id {image_id}" in escaped[0]["message"] and repr(value) in escaped[0]["message"]
    found = [p for p in report["problems"] if p["code"] == "path_outside_dataset"]
    assert found and found[0]["severity"] == "error" and report["ok"] is False
    assert not links_leaving(root / "data" / "prepared", ds)
    assert tree_listing(tmp_path, outputs(root)) == before_all  # nothing written or linked outside
    assert tree_digest(ds) == before_input


@pytest.mark.parametrize("field", ["filename", "both"])
def test_voc_filename_leaving_the_image_folder_is_reported_and_never_read(tmp_path: Path, field: str):
    plant_secret(tmp_path)
    root = tmp_path / "ws"
    ds = make_voc(root / "data" / "dataset")
    xml = ds / "Annotations" / "train_00001.xml"
    value = "../../../../secret/stolen.jpg"  # JPEGImages, dataset, data, ws -> tmp_path
    text = xml.read_text().replace("<filename>train_00001.jpg</filename>", f"<filename>{value}</filename>")
    if field == "both":  # <path> is the annotator's own absolute path: never used, so never read
        text = text.replace("</filename>", f"</filename><path>{tmp_path / 'secret' / 'stolen.jpg'}</path>")
    xml.write_text(text)
    before_input, before_all = tree_digest(ds), tree_listing(tmp_path, outputs(root))

    report, source = run_stages(root, **{})

    escaped = [p for p in source if p["code"] == "path_outside_dataset"]
    assert [p["file"] for p in escaped] == ["data/dataset/Annotations/train_00001.xml"]
    assert repr(value) in escaped[0]["message"]
    assert report["ok"] is False
    prepared = root / "data" / "prepared"
    assert not links_leaving(prepared, ds)
    # The XML is not used at all: its image is neither labelled from it nor taken as a background.
    assert not list(prepared.rglob("train_00001.*"))
    assert tree_listing(tmp_path, outputs(root)) == before_all
    assert tree_digest(ds) == before_input


def test_yolo_image_linked_to_outside_the_dataset_is_reported(tmp_path: Path):
    secret = plant_secret(tmp_path)
    root = tmp_path / "ws"
    ds = root / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=32, seed=0))
    (ds / "images" / "train" / "elsewhere.jpg").symlink_to(secret)
    (ds / "labels" / "train" / "elsewhere.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report, source = run_stages(root)
    escaped = [p for p in source if p["code"] == "path_outside_dataset"]
    assert [p["file"] for p in escaped] == ["data/dataset/images/train/elsewhere.jpg"]
    assert report["ok"] is False
    assert not links_leaving(root / "data" / "prepared", ds)


def test_symlink_loops_in_the_dataset_end(tmp_path: Path):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=32, seed=0))
    for name in ("a", "b", "c"):  # 3 links to the folder itself: endless paths if followed blindly
        (ds / "images" / "train" / name).symlink_to(".")
    report, _ = run_stages(tmp_path)
    assert report["images"] == 4


def test_images_with_one_label_name_clash_instead_of_overwriting(tmp_path: Path):
    ds = make_coco(tmp_path / "data" / "dataset")
    folder = ds / "images" / "train2017"
    first = sorted(folder.iterdir())[0]
    Image.open(first).save(folder / f"{first.stem}.png")
    annotation = ds / "annotations" / "instances_train2017.json"
    data = json.loads(annotation.read_text())
    twin = {**data["images"][0], "id": 999, "file_name": f"{first.stem}.png"}
    data["images"].append(twin)
    data["annotations"].append({"id": 9999, "image_id": 999, "category_id": 10, "bbox": [1, 1, 8, 8], "iscrowd": 0})
    annotation.write_text(json.dumps(data))
    report, source = run_stages(tmp_path)
    assert [p["code"] for p in source].count("image_name_clash") == 1
    label = tmp_path / "data" / "prepared" / "labels" / "train" / f"{first.stem}.txt"
    # The first image's own boxes, not the twin's single box written over them.
    assert len(label.read_text().splitlines()) == len(
        [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    )
    assert report["ok"] is False


def test_prepare_refuses_a_target_outside_the_prepared_folder(tmp_path: Path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    with pytest.raises(DatasetError, match="outside") as err:
        prepared_output.checked_target(prepared, prepared / "images" / "train" / ".." / ".." / ".." / "x.jpg")
    assert err.value.stage == "prepare"
    assert (
        prepared_output.checked_target(prepared, prepared / "images" / "a" / "b.jpg")
        == prepared / "images" / "a" / "b.jpg"
    )


@pytest.mark.parametrize("decode", [True, False])
def test_decompression_bomb_is_reported_with_its_size(tmp_path: Path, bomb_png: Path, decode: bool):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=32, seed=0))
    shutil.copy(bomb_png, ds / "images" / "train" / "bomb.png")
    (ds / "labels" / "train" / "bomb.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report, _ = run_stages(tmp_path, decode=decode)
    large = [p for p in report["problems"] if p["code"] == "image_too_large"]
    assert [p["file"] for p in large] == ["data/dataset/images/train/bomb.png"]
    assert large[0]["severity"] == "error" and f"{BOMB_SIDE}x{BOMB_SIDE}" in large[0]["message"]
    assert "validate.max_image_pixels" in large[0]["message"]


def test_image_pixel_limit_comes_from_params(tmp_path: Path):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=32, seed=0))
    report, _ = run_stages(tmp_path, max_image_pixels=32 * 32 - 1)
    assert {p["code"] for p in report["problems"] if p["severity"] == "error"} == {"image_too_large"}
    report, _ = run_stages(tmp_path, max_image_pixels=32 * 32)
    assert report["ok"] is True


def test_voc_bomb_without_a_size_in_its_xml_does_not_crash_prepare(tmp_path: Path, bomb_png: Path):
    ds = make_voc(tmp_path / "data" / "dataset", train=2, val=1)
    shutil.copy(bomb_png, ds / "JPEGImages" / "bomb.png")
    (ds / "Annotations" / "bomb.xml").write_text(
        "<annotation><filename>bomb.png</filename><object><name>disc</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    report, _ = run_stages(tmp_path)
    assert "data/dataset/JPEGImages/bomb.png" in {
        p["file"] for p in report["problems"] if p["code"] == "image_too_large"
    }


def test_an_exception_in_a_per_file_check_is_a_problem_for_that_file(tmp_path: Path, monkeypatch):
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=3, val=1, size=32, seed=0))
    from stages.data.validation import images  # where each label file's check is looked up

    real = images.check_label_lines

    def flaky(lines, file, *args, **kwargs):
        if file.endswith("train_00001.txt"):
            raise ZeroDivisionError("planted")
        return real(lines, file, *args, **kwargs)

    monkeypatch.setattr(images, "check_label_lines", flaky)
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    with pytest.raises(ValidationFailed, match="check_crashed"):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    report = json.loads((tmp_path / "reports" / "validate.json").read_text())
    crashed = [p for p in report["problems"] if p["code"] == "check_crashed"]
    assert [p["file"] for p in crashed] == ["data/dataset/images/train/train_00001.jpg"]
    assert "ZeroDivisionError: planted" in crashed[0]["message"]
    assert report["images"] == 4  # the other images were still checked


PIXEL_LIMIT_PROBE = """
import sys
from PIL import Image
from stages.core.runtime import image_pixel_limit
with image_pixel_limit(int(sys.argv[2])):
    import cv2
    try:
        opencv = "decoded" if cv2.imread(sys.argv[1]) is not None else "refused"
    except cv2.error:
        opencv = "refused"
    try:
        Image.open(sys.argv[1]).load()
        pil = "decoded"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pil = type(exc).__name__
print(opencv, pil)
"""


@pytest.mark.parametrize(
    ("limit", "expected"), [(9999, ["refused", "DecompressionBombWarning"]), (10000, ["decoded", "decoded"])]
)
def test_image_pixel_limit_is_exact_for_pil_and_reaches_opencv_loaded_after_it(tmp_path: Path, limit, expected):
    image = tmp_path / "img.png"
    Image.new("L", (100, 100)).save(image)
    command = [sys.executable, "-c", PIXEL_LIMIT_PROBE, str(image), str(limit)]
    done = subprocess.run(command, cwd=REPO, env=venv_env(), capture_output=True, text=True, check=True)
    assert done.stdout.split() == expected  # PIL alone would only warn up to twice its limit


def test_image_pixel_limit_is_undone_when_the_block_ends(tmp_path: Path):
    image = tmp_path / "img.png"
    Image.new("L", (100, 100)).save(image)
    before = Image.MAX_IMAGE_PIXELS
    with image_pixel_limit(100), pytest.raises(Image.DecompressionBombError):
        Image.open(image)
    assert before == Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.open(image).close()


def test_training_runs_under_the_validation_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from stages import train

    params = parse_params({"validate": {"max_image_pixels": 1234}})
    cfg = train.TrainConfig.from_params(params, tmp_path)
    cfg.data_yaml.parent.mkdir(parents=True)
    cfg.data_yaml.write_text("names: [a]\n")
    seen = {}

    def training(_cfg):  # stands in for Ultralytics: what would it be allowed to open?
        seen.update(pil=Image.MAX_IMAGE_PIXELS, opencv=os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"))
        return "trained"

    monkeypatch.setattr(train, "_run", training)
    assert train.run(cfg) == "trained"
    assert seen == {"pil": 1234, "opencv": "1234"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("names: " + "[" * 100_000, "nested deeper than 64"),  # PyYAML: minutes; its C parser: a crash
        ("names: [a'b, " + "[" * 100 + "x" + "]" * 101, "nested deeper than 64"),  # a quote cannot hide them
        ("names: [a]\n#" + "x" * (1 << 20), "at most 1048576"),
    ],
)
def test_data_yaml_too_deep_or_too_large_is_refused_before_parsing(tmp_path: Path, text: str, message: str):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=2, val=1, size=32, seed=0))
    (ds / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=message):
        run_stages(tmp_path)


def test_quoted_brackets_in_class_names_are_text(tmp_path: Path):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=2, val=1, size=32, seed=0))
    names = ["'" + "[" * 80 + "'", '"{\\"' + "[" * 70 + '"', "c"]  # 80 and 71 brackets, all quoted
    (ds / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: [{', '.join(names)}]\n")
    run_stages(tmp_path)
    classes = json.loads((tmp_path / "data" / "prepared" / "class_map.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["[" * 80, '{"' + "[" * 70, "c"]
