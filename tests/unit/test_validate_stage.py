"""The validate stage on a dataset corrupted with one of each problem kind."""

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from stages import prepare, validate
from stages.core.config import parse_params
from stages.core.errors import ValidationFailed
from stages.data.sample_data import SampleSpec, generate
from tests.conftest import REPO, tree_digest


def corrupt(root: Path) -> dict[str, str]:
    """Plant one problem of each kind; returns code -> the file (relative to root) it should name."""
    ds = root / "data" / "dataset"
    images, labels = ds / "images", ds / "labels"
    expected = {}
    (images / "train" / "train_00000.jpg").write_bytes(b"definitely not an image")
    expected["image_unreadable"] = "data/dataset/images/train/train_00000.jpg"
    data = (images / "train" / "train_00001.jpg").read_bytes()
    (images / "train" / "train_00001.jpg").write_bytes(data[: len(data) // 2])
    expected["image_truncated"] = "data/dataset/images/train/train_00001.jpg"
    (labels / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    expected["label_without_image"] = "data/dataset/labels/train/orphan.txt"
    (labels / "train" / "train_00002.txt").unlink()
    expected["image_without_label"] = "data/dataset/images/train/train_00002.jpg"
    bad = labels / "train" / "train_00003.txt"
    bad.write_text(
        "0 0.5 0.5 0.2\n"  # field count
        "0 a 0.5 0.2 0.2\n"  # not a number
        "0 nan 0.5 0.2 0.2\n"  # not finite
        "0.5 0.5 0.5 0.2 0.2\n"  # class not integer
        "7 0.5 0.5 0.2 0.2\n"  # class out of range
        "0 1.3 0.5 0.2 0.2\n"  # out of bounds
        "0 0.5 0.5 0 0.2\n"  # non-positive
        "0 0.5 0.5 0.005 0.005\n"  # tiny
        "1 0.3 0.3 0.2 0.2\n"
        "1 0.3 0.3 0.2 0.2\n"  # duplicate box
    )
    for code in (
        "label_field_count",
        "label_not_number",
        "label_not_finite",
        "class_not_integer",
        "class_out_of_range",
        "box_out_of_bounds",
        "box_non_positive",
        "box_tiny",
        "box_duplicate",
    ):
        expected[code] = "data/dataset/labels/train/train_00003.txt"
    shutil.copy(images / "train" / "train_00004.jpg", images / "train" / "copy_of_4.jpg")
    shutil.copy(labels / "train" / "train_00004.txt", labels / "train" / "copy_of_4.txt")
    expected["image_duplicate"] = "data/dataset/images/train/train_00004.jpg"  # one of the pair
    shutil.copy(images / "train" / "train_00005.jpg", images / "val" / "leak.jpg")
    shutil.copy(labels / "train" / "train_00005.txt", labels / "val" / "leak.txt")
    expected["image_duplicate_across_splits"] = "data/dataset/images/val/leak.jpg"
    meta = yaml.safe_load((ds / "data.yaml").read_text())
    meta["names"] = {**meta["names"], 3: "star"}
    (ds / "data.yaml").write_text(yaml.safe_dump(meta))
    expected["class_absent_from_train"] = "data/prepared/data.yaml"
    return expected


@pytest.mark.parametrize("workers", [1, 2])
def test_every_problem_kind_is_reported_and_the_input_is_untouched(tmp_path: Path, workers: int):
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=8, val=3, size=64, seed=0))
    expected = corrupt(tmp_path)
    before = tree_digest(tmp_path / "data" / "dataset")
    params = parse_params({"validate": {"workers": workers}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    with pytest.raises(ValidationFailed) as err:
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    assert err.value.errors > 0

    report = json.loads((tmp_path / "reports" / "validate.json").read_text())
    assert report["ok"] is False
    found: dict[str, set[str]] = {}
    for p in report["problems"]:
        assert set(p) == {"file", "line", "code", "severity", "message", "ref", "image"}
        assert p["ref"] is None and p["image"] is None  # set only for converted (VOC/COCO) labels
        found.setdefault(p["code"], set()).add(p["file"])
    for code, file in expected.items():
        assert code in found, f"{code} not reported"
        if code != "image_duplicate":
            assert file in found[code], f"{code} reported for {found[code]}, expected {file}"
        else:
            assert found[code] & {file, "data/dataset/images/train/copy_of_4.jpg"}
    lines = {p["code"]: p["line"] for p in report["problems"] if p["file"].endswith("train_00003.txt")}
    assert lines["label_field_count"] == 1 and lines["box_duplicate"] == 10
    summary = (tmp_path / "reports" / "validate.md").read_text()
    assert "| image_truncated | error | 1 |" in summary
    assert tree_digest(tmp_path / "data" / "dataset") == before


@pytest.fixture
def pil_as_in_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's own ``Image.open``, as in the ``validate`` stage's process, which never imports Ultralytics.

    Importing Ultralytics replaces ``PIL.Image.open`` for the whole process (``ultralytics.utils.patches``:
    an unidentified image makes it look for the ``pi-heif`` plugin, and the error becomes
    ``No module named 'pi_heif'``); a test that imported it earlier in this worker must not change
    what this module sees.
    """
    import sys

    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None and Image.open is getattr(patches, "image_open", None):
        monkeypatch.setattr(Image, "open", patches._image_open)


def test_the_validate_stage_never_imports_ultralytics():
    """What ``pil_as_in_the_stage`` relies on: the stage's process decodes with PIL's own opener."""
    import subprocess
    import sys

    code = "import sys, stages.validate; sys.exit('ultralytics' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.usefixtures("pil_as_in_the_stage")
def test_a_report_with_an_unidentifiable_image_is_the_same_on_every_run(tmp_path: Path):
    """PIL names the unidentified file by its repr, which for data read into memory is an object's
    address: the report (a DVC output) then changed from run to run for the same dataset."""
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=3, val=1, size=64, seed=0))
    (tmp_path / "data" / "dataset" / "images" / "train" / "train_00000.jpg").write_bytes(b"definitely not an image")
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    reports = []
    for _ in range(2):
        with pytest.raises(ValidationFailed, match="image_unreadable"):
            validate.run(validate.ValidateConfig.from_params(params, tmp_path))
        reports.append((tmp_path / "reports" / "validate.json").read_bytes())
    (unreadable,) = [p for p in json.loads(reports[0])["problems"] if p["code"] == "image_unreadable"]
    assert unreadable["file"] == "data/dataset/images/train/train_00000.jpg"
    assert " at 0x" not in unreadable["message"], unreadable["message"]
    assert "cannot identify" in unreadable["message"]
    assert reports[0] == reports[1]


def test_empty_split_is_an_error(tmp_path: Path):
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=3, val=1, size=64, seed=0))
    for f in (tmp_path / "data" / "dataset" / "images" / "val").iterdir():
        f.unlink()
    for f in (tmp_path / "data" / "dataset" / "labels" / "val").iterdir():
        f.unlink()
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    with pytest.raises(ValidationFailed):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    codes = {p["code"] for p in json.loads((tmp_path / "reports" / "validate.json").read_text())["problems"]}
    assert "split_empty" in codes


def test_clean_dataset_passes_with_class_summary(tmp_path: Path):
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=6, val=2, size=64, seed=0))
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    result = validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    assert result.ok and result.images == 8 and result.errors == 0
    assert set(result.instances_per_class["train"]) == {"square", "disc", "triangle"}


def test_real_coco128_is_validated(tmp_path: Path, coco128: Path):
    """The real COCO subset: grayscale JPEGs decode, the two background images only warn."""
    shutil.copytree(coco128, tmp_path / "data" / "dataset")
    params = parse_params({})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    result = validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    assert result.images == 160
    without_label = {p.file for p in result.problems if p.code == "image_without_label"}
    assert without_label == {
        "data/dataset/images/train/000000000250.jpg",
        "data/dataset/images/train/000000000508.jpg",
    }
    assert result.errors == 0


def test_file_names_that_are_not_utf8_are_reported_readably(tmp_path: Path):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=64, seed=0))
    odd = os.fsdecode(b"caf\xe9")  # Latin-1 bytes in a file name
    (ds / "images" / "train" / "train_00000.jpg").rename(ds / "images" / "train" / f"{odd}.jpg")
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    with pytest.raises(ValidationFailed, match="label_without_image"):  # its label kept the old name
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    report = json.loads((tmp_path / "reports" / "validate.json").read_text(encoding="utf-8"))
    files = {p["file"] for p in report["problems"]}
    assert "data/dataset/images/train/caf\\xe9.jpg" in files
    assert "caf\\xe9.jpg" in (tmp_path / "reports" / "validate.md").read_text(encoding="utf-8")


def test_prepared_folder_without_images_is_dataset_empty(tmp_path: Path):
    generate(SampleSpec(out=tmp_path / "data" / "dataset", train=3, val=1, size=64, seed=0))
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    for image in (tmp_path / "data" / "prepared" / "images").rglob("*.jpg"):
        image.unlink()  # e.g. a dataset whose images all failed to link, or were deleted
    with pytest.raises(ValidationFailed, match="dataset_empty"):
        validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    report = json.loads((tmp_path / "reports" / "validate.json").read_text())
    codes = [p["code"] for p in report["problems"]]
    assert "dataset_empty" in codes and "split_empty" not in codes  # one clear error, not one per split
    assert report["images"] == 0


def png_with_corrupt_pixels() -> bytes:
    """A PNG whose compressed pixel data is corrupt while every chunk CRC is valid: only decoding sees it."""
    out = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(out, "PNG")
    data = bytearray(out.getvalue())
    at = data.index(b"IDAT")
    (size,) = struct.unpack(">I", data[at - 4 : at])
    payload = bytearray(data[at + 4 : at + 4 + size])
    payload[size // 2 : size // 2 + 40] = bytes(40)
    data[at + 4 : at + 4 + size] = payload
    data[at + 4 + size : at + 8 + size] = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(payload)))
    return bytes(data)


def test_decode_false_checks_headers_and_structure_only(tmp_path: Path):
    ds = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=ds, train=3, val=1, size=64, seed=0))
    (ds / "images" / "train" / "noise.png").write_bytes(png_with_corrupt_pixels())
    (ds / "labels" / "train" / "noise.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    whole = (ds / "images" / "train" / "train_00001.jpg").read_bytes()
    (ds / "images" / "train" / "train_00001.jpg").write_bytes(whole[: len(whole) // 3])

    def files_with_errors(decode: bool) -> set[str]:
        params = parse_params({"validate": {"workers": 1, "decode": decode}})
        prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
        with pytest.raises(ValidationFailed):
            validate.run(validate.ValidateConfig.from_params(params, tmp_path))
        report = json.loads((tmp_path / "reports" / "validate.json").read_text())
        return {Path(p["file"]).name for p in report["problems"] if p["severity"] == "error"}

    assert files_with_errors(decode=True) == {"noise.png", "train_00001.jpg"}
    assert files_with_errors(decode=False) == {"train_00001.jpg"}  # a truncated file still shows


def test_class_names_that_need_a_safe_key_name_are_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Issue 25: 'bus/coach' or 'traffic light' would break a column of `make compare`; validate says so."""
    dataset = tmp_path / "data" / "dataset"
    generate(SampleSpec(out=dataset, train=6, val=2, size=64, seed=0))
    (dataset / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["bus/coach", "traffic light", "disc"]})
    )
    params = parse_params({"validate": {"workers": 1}})
    prepare.run(prepare.PrepareConfig.from_params(params, tmp_path))
    with caplog.at_level("WARNING"):
        result = validate.run(validate.ValidateConfig.from_params(params, tmp_path))
    assert result.ok and result.errors == 0, "a name that needs a key name is a warning, never an error"
    summary = (tmp_path / "reports" / "validate.md").read_text()
    assert "`bus/coach` -> `ap.bus_coach`" in summary and "`traffic light` -> `ap.traffic_light`" in summary
    assert "`disc`" not in summary.split("Class names as metric keys")[1]
    assert any("'bus/coach' -> ap.bus_coach" in r.getMessage() for r in caplog.records)
