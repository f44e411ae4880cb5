"""Fuzzed datasets: whatever a COCO, VOC or YOLO dataset holds, ``prepare`` and ``validate`` end with a
report or a typed error, write nothing outside ``paths.prepared`` and ``reports/``, and leave the input as
it was.

Generated inputs: random bytes, hostile paths (``..``, absolute, drive letters, UNC, backslashes, NUL,
undecodable names), huge and non-finite numbers, values of the wrong JSON type, deep nesting, entity
tricks, unicode, odd file names and links (loops, out of the dataset).

The default run is small and derandomized (the same few hundred examples every time, well under a
minute). The long run draws fresh examples, many more: ``pytest -m fuzz_long tests/unit/test_fuzz_datasets.py``
(or ``FUZZ_LONG=1``); ``FUZZ_EXAMPLES`` sets its examples per test (default 2000).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stages import prepare, validate
from stages.core.config import parse_params
from stages.core.errors import PipelineError
from tests.formats_fixtures import tree_listing

SECRET = "<SECRET>"  # replaced by the absolute path of a file outside the workspace
LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))

# The long run is selected with -m fuzz_long (or FUZZ_LONG=1) and skipped otherwise.
_LONG_SELECTED = "'fuzz_long' in (config.getoption('markexpr') or '') or os.environ.get('FUZZ_LONG') == '1'"

HOSTILE_PATHS = [
    "../secret/stolen.png",
    "../../secret/stolen.png",
    "../../../../secret/stolen.png",
    "images/../../../../../secret/stolen.png",
    SECRET,
    "/etc/passwd",
    "C:\\secret\\stolen.png",
    "C:stolen.png",
    "c:/stolen.png",
    "\\\\server\\share\\stolen.png",
    "..\\..\\..\\secret\\stolen.png",
    "a\x00b.png",
    "",
    ".",
    "..",
    "/",
    "images",
    "train",
    "~/stolen.png",
    "a/./b/../../../x.png",
    "./a.png",
    "//a.png",
    "a.png/",
    "x" * 300 + ".png",
    "\udcff.png",
    "\ud800.png",
    "\u202egnp.png",
    "\uff58.png",  # fullwidth x
    "a.png",
    "b.jpg",
    "link_out.png",
    "loop/a.png",
]
NUMBERS = [
    10**400,
    -(10**400),
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    5e-324,
    -0.0,
    0,
    -1,
    True,
    "12",
    "1e999",
]

paths = st.one_of(
    st.sampled_from(HOSTILE_PATHS),
    st.text(max_size=24),
    st.lists(st.sampled_from(["..", ".", "a", "images", "train", "", "\\", "C:", "a.png"]), max_size=6).map("/".join),
)
numbers = st.one_of(
    st.sampled_from(NUMBERS), st.integers(), st.floats(), st.integers(min_value=-(2**70), max_value=2**70)
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), paths)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)
# Whole files that are not what they claim: bytes, deep nesting, huge numbers, byte-order marks.
# (Built from small parts so that a failing example prints short.)
raw_files = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            (b"", b"[", 100_000),
            (b'{"images": ', b"[", 50_000),
            (b"", b"{", 10_000),
            (b"", b"1", 5_000),
            (b"\xef\xbb\xbf{}", b"", 0),
            (b"\xff\xfe{\x00}\x00", b"", 0),
            (b"null", b"", 0),
            (b"[]", b"", 0),
        ]
    ).map(lambda t: t[0] + t[1] * t[2]),
)


def _encodable(name: str) -> bool:
    try:
        return len(os.fsencode(name)) < 200
    except UnicodeError:
        return False


# Names of files placed in the dataset: any unicode (and undecodable bytes) the filesystem takes.
file_names = st.one_of(
    st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=30),
    st.binary(min_size=1, max_size=20).map(lambda b: os.fsdecode(b.replace(b"/", b"_").replace(b"\x00", b"_"))),
).filter(lambda n: n not in {".", ".."} and _encodable(n))

FUZZ = settings(
    database=None,  # nothing written into the repository
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
LONG = settings(FUZZ, derandomize=False, max_examples=LONG_EXAMPLES, print_blob=True)


@functools.cache
def image_bytes(kind: str) -> bytes:
    """Small real images, and a decompression bomb (20000x20000 PNG of about 50 KB)."""
    out = io.BytesIO()
    if kind == "bomb":
        Image.new("1", (20_000, 20_000)).save(out, "PNG", optimize=True)
    else:
        Image.new("RGB", (32, 24), (200, 30, 30)).save(out, kind)
    return out.getvalue()


images_content = st.one_of(
    st.sampled_from(["PNG", "JPEG", "bomb"]).map(image_bytes),
    st.binary(max_size=64),
    st.sampled_from(["PNG", "JPEG"]).map(lambda k: image_bytes(k)[: len(image_bytes(k)) // 2]),
)


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Path]]:
    """A fresh (parent, workspace) pair: ``parent`` also holds a secret file outside the workspace."""
    parent = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        (parent / "secret").mkdir()
        (parent / "secret" / "stolen.png").write_bytes(image_bytes("PNG"))
        ws = parent / "ws"
        (ws / "data" / "dataset").mkdir(parents=True)
        yield parent, ws
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def place(path: Path, content: bytes) -> None:
    """Write ``content`` at ``path``, skipping names the filesystem refuses."""
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def plant_links(dataset: Path, parent: Path, links: list[str]) -> None:
    """Links a hostile dataset may hold: out to a file, out to a folder, to itself."""
    folder = dataset / "images" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for kind in links:
        with contextlib.suppress(OSError):
            if kind == "file_out":
                (folder / "link_out.png").symlink_to(parent / "secret" / "stolen.png")
            elif kind == "dir_out":
                (folder / "secret_dir").symlink_to(parent / "secret")
            elif kind == "root":
                (folder / "root").symlink_to("/")
            elif kind == "loop":
                (folder / "loop").symlink_to(".")
            elif kind == "dangling":
                (folder / "dangling.png").symlink_to(parent / "nowhere.png")


def substitute(value: Any, secret: str) -> Any:
    """``value`` with every :data:`SECRET` replaced by the secret file's absolute path."""
    if isinstance(value, str):
        return value.replace(SECRET, secret)
    if isinstance(value, list):
        return [substitute(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, secret) for k, v in value.items()}
    return value


def run_stages(parent: Path, ws: Path) -> None:
    """Run ``prepare`` then ``validate``; only typed errors may stop them, and nothing may leak out."""
    dataset, prepared = ws / "data" / "dataset", ws / "data" / "prepared"
    outputs = (prepared, ws / "reports")
    before = tree_listing(parent, outputs)
    params = parse_params({"validate": {"workers": 1}})
    with contextlib.suppress(PipelineError):  # a typed error is an answer; anything else fails the test
        prepare.run(prepare.PrepareConfig.from_params(params, ws))
        validate.run(validate.ValidateConfig.from_params(params, ws))
    assert tree_listing(parent, outputs) == before, "written or changed outside paths.prepared and reports/"
    real = Path(os.path.realpath(dataset))
    for path in prepared.rglob("*") if prepared.is_dir() else []:
        if path.is_symlink():
            assert Path(os.path.realpath(path)).is_relative_to(real), f"{path} links out of the dataset"
    report = ws / "reports" / "validate.json"
    if report.is_file():
        data = json.loads(report.read_text(encoding="utf-8"))
        assert data["ok"] == (data["errors"] == 0)
        assert not any(p["code"] == "check_crashed" for p in data["problems"]), data["problems"]


def dumps(value: Any) -> bytes:
    """JSON bytes; lone surrogates pass through as the invalid UTF-8 a hostile file would hold."""
    return json.dumps(value).encode("utf-8", "surrogatepass")


# --- COCO ---------------------------------------------------------------------------------------

COCO_FIELDS = {
    "image": ["id", "file_name", "width", "height"],
    "annotation": ["id", "image_id", "category_id", "bbox", "iscrowd"],
    "category": ["id", "name"],
}


def coco_base() -> dict[str, Any]:
    images = [{"id": i, "file_name": n, "width": 32, "height": 24} for i, n in ((1, "a.png"), (2, "b.jpg"))]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 10, "bbox": [2, 2, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 20, "bbox": [4, 4, 6, 6], "iscrowd": 0},
    ]
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}],
    }


@st.composite
def coco_edits(draw: st.DrawFn) -> list[tuple]:
    """Edits to a valid COCO file: a field set to a hostile value or removed, a record added or replaced."""
    edits = []
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["image", "annotation", "category", "top", "extra_image", "bbox"]))
        if what == "top":
            edits.append((what, draw(st.sampled_from(["images", "annotations", "categories"])), draw(json_values)))
        elif what == "extra_image":
            edits.append((what, draw(numbers | st.integers(3, 5)), draw(paths)))
        elif what == "bbox":
            edits.append((what, draw(st.integers(0, 1)), draw(st.lists(numbers, max_size=6))))
        else:
            key = draw(st.sampled_from(COCO_FIELDS[what]))
            value = draw(st.one_of(paths, numbers, json_values, st.just("<delete>")))
            edits.append((what, draw(st.integers(0, 1)), key, value))
    return edits


def apply_coco(edits: list[tuple]) -> dict[str, Any]:
    data = coco_base()
    for edit in edits:
        what = edit[0]
        if what == "top":
            data[edit[1]] = edit[2]
        elif what == "extra_image" and isinstance(data["images"], list):
            data["images"].append({"id": edit[1], "file_name": edit[2], "width": 32, "height": 24})
        elif what == "bbox" and isinstance(data["annotations"], list) and len(data["annotations"]) > edit[1]:
            record = data["annotations"][edit[1]]
            if isinstance(record, dict):
                record["bbox"] = edit[2]
        elif what in COCO_FIELDS:
            records = data.get({"image": "images", "annotation": "annotations", "category": "categories"}[what])
            if isinstance(records, list) and len(records) > edit[1] and isinstance(records[edit[1]], dict):
                _what, index, key, value = edit
                if value == "<delete>":
                    records[index].pop(key, None)
                else:
                    records[index][key] = value
    return data


def check_coco(edits: list[tuple], raw: bytes | None, second: bool, contents: tuple[bytes, bytes], links: list[str]):
    with workspace() as (parent, ws):
        dataset = ws / "data" / "dataset"
        data = substitute(apply_coco(edits), str(parent / "secret" / "stolen.png"))
        place(dataset / "annotations" / "instances_train.json", raw if raw is not None else dumps(data))
        if second:
            place(dataset / "annotations" / "instances_val.json", dumps(coco_base()))
        for name, content in zip(("a.png", "b.jpg"), contents, strict=True):
            place(dataset / "images" / "train" / name, content)
            place(dataset / "images" / "val" / name, image_bytes("PNG"))
        plant_links(dataset, parent, links)
        run_stages(parent, ws)


link_kinds = st.lists(st.sampled_from(["file_out", "dir_out", "root", "loop", "dangling"]), max_size=3, unique=True)
coco_cases = {
    "edits": coco_edits(),
    "raw": st.none() | st.none() | raw_files,
    "second": st.booleans(),
    "contents": st.tuples(images_content, images_content),
    "links": link_kinds,
}


# --- VOC ----------------------------------------------------------------------------------------

VOC_ATTACKS = [
    b"<annotation>" * 2_000 + b"<filename>a.png</filename>",
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
    b'<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">]><annotation><filename>&g;</filename></annotation>',
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://' + SECRET.encode() + b'">]>'
    b"<annotation><filename>&x;</filename></annotation>",
    b"<annotation><filename>a.png</filename><object><name>a</name><bndbox>",
    b"\xef\xbb\xbf<annotation/>",
]


@st.composite
def voc_xml(draw: st.DrawFn) -> bytes:
    """One XML file: the usual fields with hostile values, or an attack, or bytes."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "attack", "raw"]))
    if kind == "attack":
        return draw(st.sampled_from(VOC_ATTACKS))
    if kind == "raw":
        return draw(raw_files)

    def text() -> str:
        return escape(str(draw(st.one_of(paths, numbers, st.text(max_size=10)))))

    parts = ["<annotation>"]
    if draw(st.booleans()):
        parts.append(f"<filename>{text()}</filename>")
    if draw(st.booleans()):
        parts.append(f"<path>{text()}</path>")
    if draw(st.booleans()):
        parts.append(f"<size><width>{text()}</width><height>{text()}</height></size>")
    for _ in range(draw(st.integers(0, 3))):
        coords = "".join(f"<{k}>{text()}</{k}>" for k in ("xmin", "ymin", "xmax", "ymax") if draw(st.booleans()))
        name = draw(st.sampled_from(["a", "b", ""])) if draw(st.booleans()) else text()
        parts.append(f"<object><name>{name}</name><difficult>{text()}</difficult><bndbox>{coords}</bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts).encode("utf-8", "surrogatepass")


def check_voc(xmls: list[tuple[str, bytes]], split_list: bytes | None, contents: tuple[bytes, bytes]):
    with workspace() as (parent, ws):
        dataset = ws / "data" / "dataset"
        (dataset / "Annotations").mkdir()
        secret = str(parent / "secret" / "stolen.png").encode()
        for stem, xml in xmls:
            place(dataset / "Annotations" / f"{stem}.xml", xml.replace(SECRET.encode(), secret))
        for name, content in zip(("a.png", "b.jpg"), contents, strict=True):
            place(dataset / "JPEGImages" / name, content)
        with contextlib.suppress(OSError):
            (dataset / "JPEGImages" / "link_out.png").symlink_to(parent / "secret" / "stolen.png")
        if split_list is not None:
            place(dataset / "ImageSets" / "Main" / "train.txt", split_list)
        run_stages(parent, ws)


voc_cases = {
    "xmls": st.lists(st.tuples(st.sampled_from(["a", "b", "c", "link_out"]) | file_names, voc_xml()), max_size=3),
    "split_list": st.none()
    | raw_files
    | st.lists(paths, max_size=4).map(lambda v: "\n".join(v).encode("utf-8", "surrogatepass")),
    "contents": st.tuples(images_content, images_content),
}


# --- YOLO ---------------------------------------------------------------------------------------

yaml_values = st.one_of(paths, numbers, json_values, st.just({0: "a", 1: "b"}), st.just(["a", "b"]))
YAML_ATTACKS = [
    b"[" * 2_000,
    b"a: &a [x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nnames: [*c, *c, *c, *c]\n",
    b"names: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    b"names: [a]\ntrain: images/train\nnc: 1" + b"0" * 4_400 + b"\n",
    b"names: {.inf: a}\ntrain: images/train\n",
    b"names: {01: a, 1: b}\ntrain: images/train\n",
    b"\xff\xfe\x00",
]


@st.composite
def data_yaml(draw: st.DrawFn) -> bytes:
    """A data.yaml: the usual keys with hostile values, an attack, or bytes."""
    kind = draw(st.sampled_from(["keys", "keys", "keys", "attack", "raw"]))
    if kind == "attack":
        return draw(st.sampled_from(YAML_ATTACKS))
    if kind == "raw":
        return draw(raw_files)
    data: dict[str, Any] = {"names": ["a", "b"], "train": "images/train", "val": "images/val"}
    for key in draw(st.lists(st.sampled_from(["path", "train", "val", "test", "names", "nc", "download"]), max_size=3)):
        data[key] = draw(yaml_values)
    try:
        return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, ValueError):
        return b"names: [a]\ntrain: images/train\n"


label_line = st.one_of(
    st.lists(st.one_of(numbers.map(str), st.text(max_size=6)), max_size=7).map(" ".join),
    st.tuples(st.integers(-1, 3), *[numbers | st.floats(0, 1)] * 4).map(lambda t: " ".join(map(str, t))),
)
labels_content = st.one_of(
    st.lists(label_line, max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")), raw_files
)


def check_yolo(meta: bytes, files: list[tuple[str, str, bytes, bytes | None]], links: list[str]):
    with workspace() as (parent, ws):
        dataset = ws / "data" / "dataset"
        place(dataset / "data.yaml", meta.replace(SECRET.encode(), str(parent / "secret").encode()))
        for split in ("train", "val"):
            (dataset / "images" / split).mkdir(parents=True, exist_ok=True)
            (dataset / "labels" / split).mkdir(parents=True, exist_ok=True)
        for split, name, content, label in files:
            place(dataset / "images" / split / name, content)
            if label is not None:
                place((dataset / "labels" / split / name).with_suffix(".txt"), label)
        plant_links(dataset, parent, links)
        run_stages(parent, ws)


suffixes = st.sampled_from([".png", ".jpg", ".JPG", ".jpeg", ".webp", ".txt", ""])
yolo_cases = {
    "meta": data_yaml(),
    "files": st.lists(
        st.tuples(
            st.sampled_from(["train", "val"]),
            st.tuples(file_names, suffixes).map("".join),
            images_content,
            st.none() | labels_content,
        ),
        max_size=4,
    ),
    "links": link_kinds,
}


# --- The tests: a short run by default, a long one on demand -----------------------------------------


def fuzz(check: Callable[..., None], cases: dict[str, st.SearchStrategy], examples: int | None) -> Callable[..., None]:
    """A property test of ``check`` over ``cases``: ``examples`` of them, or the long run's budget when ``None``."""
    chosen = settings(FUZZ, max_examples=examples) if examples is not None else LONG
    return chosen(given(**cases)(check))


test_coco_files_never_crash_nor_escape = fuzz(check_coco, coco_cases, 120)
test_voc_files_never_crash_nor_escape = fuzz(check_voc, voc_cases, 100)
test_yolo_files_never_crash_nor_escape = fuzz(check_yolo, yolo_cases, 120)


def long_run(test: Callable[..., None]) -> Callable[..., None]:
    """``test`` marked ``fuzz_long``, skipped unless that run was asked for."""
    skip = pytest.mark.skipif(f"not ({_LONG_SELECTED})", reason="long fuzz: pytest -m fuzz_long " + __file__)
    return skip(pytest.mark.fuzz_long(test))


test_coco_long = long_run(fuzz(check_coco, coco_cases, None))
test_voc_long = long_run(fuzz(check_voc, voc_cases, None))
test_yolo_long = long_run(fuzz(check_yolo, yolo_cases, None))
