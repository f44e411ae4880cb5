"""Stage ``validate``: check the prepared dataset and report every problem, never touching the input.

Each image is read once, hashed, and decoded once (JPEGs at reduced scale through libjpeg's DCT
scaling, which still walks the whole compressed stream, so truncation and corruption are caught at a
fraction of the cost of a full decode). Work is spread over processes with a bounded number of
chunks in flight, so only small per-image records (a digest, a path) accumulate, never the images.
Cross-file checks (pairs, duplicate images within and across splits, empty splits, classes missing
from train) run on those records. Problems met by ``prepare`` while reading VOC/COCO annotations are merged in, and
problems in converted labels are reported against the source annotation file and line.

Every problem carries the file (the source file in the input dataset), the line where there is one,
a stable code, a severity, and a message. Any ``error`` stops the chain.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import os
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from stages.core.common import read_json, stage_main, write_json, write_text
from stages.core.config import Params, ValidateParams
from stages.core.errors import ValidationFailed
from stages.data.datasets import (
    LABEL_SOURCES,
    SOURCE_PROBLEMS,
    ImageTooLarge,
    iter_images,
    label_path_for,
    open_image,
    printable,
    read_prepared_yaml,
    split_dirs,
)

log = logging.getLogger(__name__)

STAGE = "validate"
Severity = Literal["error", "warning"]
_CHUNK = 128  # images per task sent to a worker process

# Stable problem codes and their severity. Codes are part of the report's contract.
CODES: dict[str, Severity] = {
    "image_unreadable": "error",
    "image_truncated": "error",
    "image_too_large": "error",
    "path_outside_dataset": "error",
    "check_crashed": "error",
    "image_missing": "error",
    "image_name_clash": "error",
    "label_without_image": "error",
    "image_without_label": "warning",
    "annotation_malformed": "error",
    "annotation_unknown_image": "error",
    "annotation_crowd_skipped": "warning",
    "label_field_count": "error",
    "label_not_number": "error",
    "label_not_finite": "error",
    "class_not_integer": "error",
    "class_out_of_range": "error",
    "box_out_of_bounds": "error",
    "box_non_positive": "error",
    "box_mostly_outside": "error",
    "box_partly_outside": "warning",
    "box_tiny": "warning",
    "box_duplicate": "warning",
    "image_duplicate": "warning",
    "image_duplicate_across_splits": "error",
    "split_empty": "error",
    "dataset_empty": "error",
    "class_absent_from_train": "warning",
}


class ValidateConfig(BaseModel):
    """Inputs, outputs and thresholds of ``validate``."""

    model_config = ConfigDict(frozen=True)

    data_yaml: Path
    report: Path
    summary: Path
    workspace: Path
    options: ValidateParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> ValidateConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            data_yaml=params.paths.resolve("prepared", root) / "data.yaml",
            report=params.paths.resolve("validate_report", root),
            summary=params.paths.resolve("validate_summary", root),
            workspace=root,
            options=params.validate_,
        )


class Problem(BaseModel):
    """One problem found in the dataset."""

    file: str
    line: int | None
    code: str
    severity: Severity
    message: str
    # For a problem in a converted label (VOC/COCO): the annotation it came from and the image it is on.
    ref: str | None = None
    image: str | None = None


class ValidateResult(BaseModel):
    """The report written to ``reports/validate.json``."""

    ok: bool
    images: int
    errors: int
    warnings: int
    problems: list[Problem]
    splits: dict[str, int]
    instances_per_class: dict[str, dict[str, int]]
    box_size_px: dict[str, float]


class _LabelSource(NamedTuple):
    """Where the lines of a converted label file came from (written by ``prepare``)."""

    file: str
    lines: list[int | None]
    refs: list[str]


@dataclass(frozen=True)
class _Checks:
    """Thresholds shipped to worker processes."""

    workspace: str  # resolved, as a string: paths are compared as strings on the hot path
    num_classes: int
    min_box_pixels: float
    max_outside_fraction: float
    duplicate_iou: float
    decode: bool
    max_pixels: int


class _ImageRecord(NamedTuple):
    """What a worker learns about one image and its label file (plain data: cheap to pickle)."""

    split: str
    image: str
    digest: str | None
    width: int | None
    height: int | None
    boxes: list[tuple[int, float, float, float, float]]
    problems: list[Problem]


def _problem(code: str, file: str, message: str, line: int | None = None) -> Problem:
    return Problem(file=file, line=line, code=code, severity=CODES[code], message=message)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def outside_fraction(cx: float, cy: float, w: float, h: float) -> float:
    """Share of a box's area that lies outside the unit square."""
    if cx - w / 2 >= 0.0 and cx + w / 2 <= 1.0 and cy - h / 2 >= 0.0 and cy + h / 2 <= 1.0:
        return 0.0
    inside_w = max(0.0, min(1.0, cx + w / 2) - max(0.0, cx - w / 2))
    inside_h = max(0.0, min(1.0, cy + h / 2) - max(0.0, cy - h / 2))
    # Per axis: w * h underflows to 0 for tiny boxes (1e-200 each), a division by zero.
    return 1.0 - min(1.0, inside_w / w) * min(1.0, inside_h / h)


def check_label_lines(
    lines: Iterable[str],
    file: str,
    num_classes: int,
    size: tuple[int, int] | None,
    min_box_pixels: float,
    duplicate_iou: float,
    max_outside_fraction: float = 0.5,
) -> tuple[list[tuple[int, float, float, float, float]], list[Problem]]:
    """Parse and check the lines of one YOLO label file.

    Args:
        lines: The file's lines.
        file: The file's name for the report.
        num_classes: Number of classes; ids must lie in ``[0, num_classes)``.
        size: Image (width, height) in pixels when known, for the tiny-box check.
        min_box_pixels: Boxes with a side below this many pixels are reported as tiny.
        duplicate_iou: Two boxes of one class overlapping at least this IoU are duplicates.
        max_outside_fraction: Boxes with more of their area outside the image are errors; boxes
            with less (but some) outside are warnings, since training clips them.

    Returns:
        The boxes training would use as (class, cx, cy, w, h), and the problems found.
    """
    boxes: list[tuple[int, float, float, float, float]] = []
    problems: list[Problem] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 5:
            problems.append(
                _problem("label_field_count", file, f"expected 5 fields (class cx cy w h), got {len(fields)}", number)
            )
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            problems.append(_problem("label_not_number", file, f"not all fields are numbers: {text!r}", number))
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(_problem("label_not_finite", file, f"NaN or infinite value: {text!r}", number))
            continue
        cls_value, cx, cy, w, h = values
        if cls_value != int(cls_value):
            problems.append(_problem("class_not_integer", file, f"class id {fields[0]} is not an integer", number))
            continue
        cls = int(cls_value)
        if not 0 <= cls < num_classes:
            problems.append(
                _problem("class_out_of_range", file, f"class id {cls} outside [0, {num_classes - 1}]", number)
            )
            continue
        if w <= 0 or h <= 0:
            problems.append(_problem("box_non_positive", file, f"box width/height must be > 0, got {w}, {h}", number))
            continue
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            problems.append(
                _problem(
                    "box_out_of_bounds",
                    file,
                    f"box ({cx}, {cy}, {w}, {h}) is not normalised: every value must lie in [0, 1]",
                    number,
                )
            )
            continue
        outside = outside_fraction(cx, cy, w, h)
        if outside > 1e-6:
            code = "box_mostly_outside" if outside > max_outside_fraction else "box_partly_outside"
            problems.append(
                _problem(
                    code,
                    file,
                    f"{outside:.0%} of the box lies outside the image "
                    f"(validate.max_outside_fraction={max_outside_fraction})",
                    number,
                )
            )
            if code == "box_mostly_outside":
                continue
        if size is not None and min(w * size[0], h * size[1]) < min_box_pixels:
            problems.append(
                _problem(
                    "box_tiny",
                    file,
                    f"box is {w * size[0]:.1f}x{h * size[1]:.1f} px, below validate.min_box_pixels={min_box_pixels}",
                    number,
                )
            )
        box = (cls, cx, cy, w, h)
        for other in boxes:
            if other[0] == cls and _iou(box[1:], other[1:]) >= duplicate_iou:
                problems.append(
                    _problem(
                        "box_duplicate",
                        file,
                        f"duplicates an earlier box of class {cls} (IoU ≥ {duplicate_iou})",
                        number,
                    )
                )
                break
        else:
            boxes.append(box)
    return boxes, problems


def _display(path: Path | str, workspace: str) -> str:
    """The path to show a user: the file a prepared link points to, relative to the workspace when inside it.

    Prepared images and labels are single links made by ``prepare``, so one ``readlink`` resolves them
    (much cheaper than a full ``realpath`` on the hot path).
    """
    path = os.fspath(path)
    try:
        real = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    except OSError:  # not a link
        real = os.path.abspath(path)
    prefix = workspace + os.sep
    return printable(real[len(prefix) :] if real.startswith(prefix) else real)


def _decode(data: bytes, full: bool, max_pixels: int) -> tuple[int, int]:
    """Open an image from memory and return its size; raises on unreadable, corrupt or too large data.

    The size is checked against ``max_pixels`` from the header, before any pixel is decoded. With
    ``full``, decode the pixels once: JPEGs at 1/8 scale through libjpeg's DCT scaling, which still
    walks the whole entropy-coded stream, so corruption anywhere in the file is caught. Without,
    check the header and the structure PIL can verify cheaply.

    Raises:
        ImageTooLarge: When the header declares more than ``max_pixels`` pixels.
    """
    with open_image(io.BytesIO(data), max_pixels) as im:
        size = im.size
        if not full:
            im.verify()
            return size
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


def _to_source(problems: list[Problem], source: _LabelSource, image: str) -> list[Problem]:
    """Re-point problems found in a converted label file at the annotation they came from."""
    moved = []
    for p in problems:
        index = (p.line or 0) - 1
        update: dict[str, object] = {"file": source.file, "image": image}
        if 0 <= index < len(source.refs):
            update.update(
                line=source.lines[index], ref=source.refs[index], message=f"{source.refs[index]}: {p.message}"
            )
        moved.append(p.model_copy(update=update))
    return moved


def _check_image(
    split: str, image_path: Path, label_path: Path | None, source: _LabelSource | None, checks: _Checks
) -> _ImageRecord:
    """Read, hash and decode one image once; parse its label file."""
    shown = _display(image_path, checks.workspace)
    problems: list[Problem] = []
    digest = width = height = None
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        problems.append(_problem("image_unreadable", shown, f"cannot read file: {exc}"))
        data = None
    if data == b"":
        problems.append(_problem("image_unreadable", shown, "file is empty"))
    elif data:
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        try:
            width, height = _decode(data, checks.decode, checks.max_pixels)
            if image_path.suffix.lower() in {".jpg", ".jpeg"} and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                problems.append(
                    _problem("image_truncated", shown, "JPEG lacks its end-of-image marker (truncated or corrupt)")
                )
        except ImageTooLarge as exc:
            message = (
                f"{exc.width}x{exc.height} pixels ({exc.width * exc.height}) is over "
                f"validate.max_image_pixels={exc.limit}; not decoded"
            )
            problems.append(_problem("image_too_large", shown, message))
        except OSError as exc:  # PIL raises OSError subclasses for most undecodable data
            code = "image_truncated" if "truncated" in str(exc).lower() else "image_unreadable"
            problems.append(_problem(code, shown, f"cannot decode image: {exc}"))
        except Exception as exc:  # and many other types for crafted data (struct.error, IndexError, ...)
            problems.append(_problem("image_unreadable", shown, f"cannot decode image: {type(exc).__name__}: {exc}"))

    boxes: list[tuple[int, float, float, float, float]] = []
    if label_path is not None:
        label_shown = _display(label_path, checks.workspace)
        try:
            lines = label_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(_problem("label_not_number", label_shown, f"cannot read label file as text: {exc}"))
            lines = []
        size = (width, height) if width and height else None
        boxes, label_problems = check_label_lines(
            lines,
            label_shown,
            checks.num_classes,
            size,
            checks.min_box_pixels,
            checks.duplicate_iou,
            checks.max_outside_fraction,
        )
        problems.extend(_to_source(label_problems, source, shown) if source else label_problems)
    else:
        problems.append(
            _problem("image_without_label", shown, "no label file: trained as a background image with no objects")
        )
    return _ImageRecord(
        split=split, image=shown, digest=digest, width=width, height=height, boxes=boxes, problems=problems
    )


def _check_job(
    split: str, image_path: Path, label_path: Path | None, source: _LabelSource | None, checks: _Checks
) -> _ImageRecord:
    """Check one image; an exception no check foresaw becomes a ``check_crashed`` problem of that image."""
    try:
        return _check_image(split, image_path, label_path, source, checks)
    except Exception as exc:  # no input may crash the stage, and nothing may pass unreported
        shown = _display(image_path, checks.workspace)
        message = f"checking it raised {type(exc).__name__}: {exc} (a bug in validate; the file was not checked)"
        return _ImageRecord(split, shown, None, None, None, [], [_problem("check_crashed", shown, message)])


def _check_chunk(jobs: list[tuple[str, Path, Path | None, _LabelSource | None]], checks: _Checks) -> list[_ImageRecord]:
    return [_check_job(*job, checks) for job in jobs]


def _jobs(
    splits: dict[str, tuple[Path, Path]], prepared: Path, sources: dict[str, Any], paired: set[Path]
) -> Iterator[tuple[str, Path, Path | None, _LabelSource | None]]:
    """One job per image; records in ``paired`` the label path of every image, for the orphan check."""
    for split, (images, labels) in splits.items():
        for image in iter_images(images):
            label = label_path_for(image, images, labels)
            paired.add(label)
            if not label.is_file():
                yield split, image, None, None
                continue
            key = label.relative_to(prepared).as_posix()
            yield split, image, label, _LabelSource(**sources[key]) if key in sources else None


def _records(jobs: Iterator[tuple], checks: _Checks, workers: int) -> Iterator[_ImageRecord]:
    """Check every job, in order, with at most ``2 * workers`` chunks in flight."""
    chunks = iter(lambda: list(itertools.islice(jobs, _CHUNK)), [])
    if workers <= 1:
        for chunk in chunks:
            yield from _check_chunk(chunk, checks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[list[_ImageRecord]]] = []
        for chunk in chunks:
            pending.append(pool.submit(_check_chunk, chunk, checks))
            if len(pending) >= 2 * workers:
                yield from pending.pop(0).result()
        for future in pending:
            yield from future.result()


def _orphan_labels(splits: dict[str, tuple[Path, Path]], paired: set[Path], workspace: str) -> list[Problem]:
    problems = []
    for _images, labels in splits.values():
        if not labels.is_dir():
            continue
        for label in sorted(labels.rglob("*.txt")):
            if label not in paired:
                problems.append(
                    _problem("label_without_image", _display(label, workspace), "label file has no matching image")
                )
    return problems


def run(cfg: ValidateConfig) -> ValidateResult:
    """Validate the prepared dataset and write the report.

    Args:
        cfg: Paths and thresholds.

    Returns:
        The report (also written to ``cfg.report`` and ``cfg.summary``).

    Raises:
        ValidationFailed: When any problem of ``error`` severity was found (after writing the report).
    """
    data = read_prepared_yaml(cfg.data_yaml)
    prepared = cfg.data_yaml.parent
    names: list[str] = data["names"]
    splits = split_dirs(data)
    workspace = str(cfg.workspace.resolve())
    checks = _Checks(
        workspace=workspace,
        num_classes=len(names),
        min_box_pixels=cfg.options.min_box_pixels,
        max_outside_fraction=cfg.options.max_outside_fraction,
        duplicate_iou=cfg.options.duplicate_iou,
        decode=cfg.options.decode,
        max_pixels=cfg.options.max_image_pixels,
    )
    sources = read_json(prepared / LABEL_SOURCES, stage=STAGE, default={})
    problems = [
        Problem(severity=CODES[p["code"]], **p) for p in read_json(prepared / SOURCE_PROBLEMS, stage=STAGE, default=[])
    ]
    split_counts: Counter[str] = Counter()
    instances: dict[str, Counter[str]] = defaultdict(Counter)
    first_seen: dict[str, tuple[str, str]] = {}  # image digest -> (split, file) of its first occurrence
    widths, heights = array("f"), array("f")

    paired: set[Path] = set()  # label paths of every image, filled while the jobs are handed out
    jobs = _jobs(splits, prepared, sources, paired)
    for record in _records(jobs, checks, cfg.options.workers or os.cpu_count() or 1):
        split_counts[record.split] += 1
        problems.extend(record.problems)
        if record.digest:
            first = first_seen.setdefault(record.digest, (record.split, record.image))
            if first[1] != record.image:
                if first[0] != record.split:
                    problems.append(
                        _problem(
                            "image_duplicate_across_splits",
                            record.image,
                            f"identical to {first[1]} in split '{first[0]}' (train/val leakage)",
                        )
                    )
                else:
                    problems.append(
                        _problem("image_duplicate", record.image, f"identical to {first[1]} in the same split")
                    )
        for cls, _cx, _cy, w, h in record.boxes:
            instances[record.split][names[cls]] += 1
            if record.width and record.height:
                widths.append(w * record.width)
                heights.append(h * record.height)

    problems.extend(_orphan_labels(splits, paired, workspace))
    yaml_shown = _display(cfg.data_yaml, workspace)
    total = sum(split_counts.values())
    if total == 0:
        problems.append(_problem("dataset_empty", yaml_shown, "the dataset has no images"))
    else:
        for split in ("train", "val"):
            if split_counts[split] == 0:
                problems.append(_problem("split_empty", yaml_shown, f"split '{split}' has no images"))
        for name in names:
            if split_counts["train"] and instances["train"][name] == 0:
                problems.append(
                    _problem("class_absent_from_train", yaml_shown, f"class '{name}' has no box in the train split")
                )

    errors = sum(p.severity == "error" for p in problems)
    result = ValidateResult(
        ok=errors == 0,
        images=total,
        errors=errors,
        warnings=len(problems) - errors,
        problems=problems,
        splits=dict(split_counts),
        instances_per_class={s: {n: instances[s][n] for n in names} for s in split_counts},
        box_size_px=_size_summary(widths, heights),
    )
    write_json(cfg.report, result)
    summary = render_summary(result, cfg.options.examples_per_code)
    write_text(cfg.summary, summary)
    for line in summary.splitlines():
        log.info("%s", line)
    if errors:
        raise ValidationFailed(
            f"{errors} error(s) in the dataset; see {cfg.report} (codes: "
            f"{', '.join(sorted({p.code for p in problems if p.severity == 'error'}))})",
            errors=errors,
            path=cfg.report,
        )
    return result


def _size_summary(widths: array, heights: array) -> dict[str, float]:
    if not widths:
        return {}
    ws, hs = sorted(widths), sorted(heights)
    mid = len(ws) // 2
    return {
        "boxes": float(len(ws)),
        "min_width": round(ws[0], 2),
        "median_width": round(ws[mid], 2),
        "max_width": round(ws[-1], 2),
        "min_height": round(hs[0], 2),
        "median_height": round(hs[mid], 2),
        "max_height": round(hs[-1], 2),
    }


def _example(problem: Problem) -> str:
    """One problem as a summary example: its file and line, and for converted labels which annotation and image."""
    where = f"`{problem.file}{':' + str(problem.line) if problem.line else ''}`"
    if problem.ref:
        where += f" {problem.ref}"
    if problem.image:
        where += f" (image `{Path(problem.image).name}`)"
    return where


def render_summary(result: ValidateResult, examples: int) -> str:
    """A markdown section for people: verdict, problems grouped by code, class balance and box sizes."""
    lines = [
        "## Dataset validation",
        "",
        f"Verdict: **{'passed' if result.ok else 'failed'}**: {result.images} images "
        f"({', '.join(f'{s}: {n}' for s, n in result.splits.items())}), "
        f"{result.errors} error(s), {result.warnings} warning(s).",
        "",
    ]
    by_code: dict[str, list[Problem]] = defaultdict(list)
    for p in result.problems:
        by_code[p.code].append(p)
    if by_code:
        lines += ["| code | severity | count | first files |", "|---|---|---|---|"]
        for code in sorted(by_code, key=lambda c: (CODES[c] != "error", c)):
            items = by_code[code]
            shown = ", ".join(_example(p) for p in items[:examples])
            rest = f" and {len(items) - examples} more" if len(items) > examples else ""
            lines.append(f"| {code} | {CODES[code]} | {len(items)} | {shown}{rest} |")
        lines.append("")
    if result.instances_per_class:
        splits = list(result.instances_per_class)
        lines += ["| class | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        for name in next(iter(result.instances_per_class.values())):
            lines.append(f"| {name} | " + " | ".join(str(result.instances_per_class[s][name]) for s in splits) + " |")
        lines.append("")
    if result.box_size_px:
        b = result.box_size_px
        lines.append(
            f"Box sizes (px): width {b['min_width']} to {b['max_width']} (median {b['median_width']}), "
            f"height {b['min_height']} to {b['max_height']} (median {b['median_height']})."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, ValidateConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
