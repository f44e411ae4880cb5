"""Every image of the prepared dataset read, hashed and decoded once, across processes.

Each image is read once, hashed, and decoded once (JPEGs at reduced scale through libjpeg's DCT
scaling, which still walks the whole compressed stream, so truncation and corruption are caught at a
fraction of the cost of a full decode); its label file is checked line by line (``labels``). Work is
spread over processes with a bounded number of chunks in flight, so only small per-image records (a
digest, a path, the boxes) accumulate, never the images. Problems in converted labels (VOC/COCO) are
re-pointed at the source annotation file and line ``prepare`` recorded.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from PIL import UnidentifiedImageError

from stages.data.datasets import ImageTooLarge, iter_images, label_path_for, open_image, printable
from stages.data.validation.labels import check_label_lines
from stages.data.validation.problems import Problem
from stages.data.validation.problems import problem as _problem

_CHUNK = 128  # images per task sent to a worker process


class _LabelSource(NamedTuple):
    """Where the lines of a converted label file came from (written by ``prepare``)."""

    file: str
    lines: list[int | None]
    refs: list[str]


@dataclass(frozen=True)
class Checks:
    """Thresholds shipped to worker processes (built by the ``validate`` entry from its params)."""

    workspace: str  # resolved, as a string: paths are compared as strings on the hot path
    num_classes: int
    min_box_pixels: float
    max_outside_fraction: float
    duplicate_iou: float
    decode: bool
    max_pixels: int


class ImageRecord(NamedTuple):
    """What a worker learns about one image and its label file (plain data: cheap to pickle)."""

    split: str
    image: str
    digest: str | None
    width: int | None
    height: int | None
    boxes: list[tuple[int, float, float, float, float]]
    problems: list[Problem]


def display(path: Path | str, workspace: str) -> str:
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
    split: str, image_path: Path, label_path: Path | None, source: _LabelSource | None, checks: Checks
) -> ImageRecord:
    """Read, hash and decode one image once; parse its label file."""
    shown = display(image_path, checks.workspace)
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
        except UnidentifiedImageError:
            # PIL's words name the data by its repr, an in-memory object's address: a report that
            # changed from run to run for the same file.
            problems.append(_problem("image_unreadable", shown, "cannot decode image: cannot identify image file"))
        except OSError as exc:  # PIL raises OSError subclasses for most undecodable data
            code = "image_truncated" if "truncated" in str(exc).lower() else "image_unreadable"
            problems.append(_problem(code, shown, f"cannot decode image: {exc}"))
        except Exception as exc:  # and many other types for crafted data (struct.error, IndexError, ...)
            problems.append(_problem("image_unreadable", shown, f"cannot decode image: {type(exc).__name__}: {exc}"))

    boxes: list[tuple[int, float, float, float, float]] = []
    if label_path is not None:
        label_shown = display(label_path, checks.workspace)
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
    return ImageRecord(
        split=split, image=shown, digest=digest, width=width, height=height, boxes=boxes, problems=problems
    )


def _check_job(
    split: str, image_path: Path, label_path: Path | None, source: _LabelSource | None, checks: Checks
) -> ImageRecord:
    """Check one image; an exception no check foresaw becomes a ``check_crashed`` problem of that image."""
    try:
        return _check_image(split, image_path, label_path, source, checks)
    except Exception as exc:  # no input may crash the stage, and nothing may pass unreported
        shown = display(image_path, checks.workspace)
        message = f"checking it raised {type(exc).__name__}: {exc} (a bug in validate; the file was not checked)"
        return ImageRecord(split, shown, None, None, None, [], [_problem("check_crashed", shown, message)])


def _check_chunk(jobs: list[tuple[str, Path, Path | None, _LabelSource | None]], checks: Checks) -> list[ImageRecord]:
    return [_check_job(*job, checks) for job in jobs]


def image_jobs(
    splits: dict[str, tuple[Path, Path]], prepared: Path, sources: dict[str, Any], paired: set[Path]
) -> Iterator[tuple[str, Path, Path | None, _LabelSource | None]]:
    """One job per image: its split, its path, its label file (if any) and where that label came from.

    Args:
        splits: Each split's (images, labels) folders.
        prepared: The prepared dataset's folder (the keys of ``sources`` are relative to it).
        sources: ``prepare``'s record of where each converted label file's lines came from.
        paired: Filled, as the jobs are handed out, with the label path of every image (for
            ``orphan_labels``).

    Yields:
        ``(split, image, label or None, label source or None)``.
    """
    for split, (images, labels) in splits.items():
        for image in iter_images(images):
            label = label_path_for(image, images, labels)
            paired.add(label)
            if not label.is_file():
                yield split, image, None, None
                continue
            key = label.relative_to(prepared).as_posix()
            yield split, image, label, _LabelSource(**sources[key]) if key in sources else None


def check_images(jobs: Iterator[tuple], checks: Checks, workers: int) -> Iterator[ImageRecord]:
    """Check every job, in order, with at most ``2 * workers`` chunks in flight.

    Args:
        jobs: From ``image_jobs``.
        checks: The thresholds, shipped to every worker process.
        workers: Processes to use; 1 checks in this process.

    Yields:
        One record per job, in the jobs' order.
    """
    chunks = iter(lambda: list(itertools.islice(jobs, _CHUNK)), [])
    if workers <= 1:
        for chunk in chunks:
            yield from _check_chunk(chunk, checks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[list[ImageRecord]]] = []
        for chunk in chunks:
            pending.append(pool.submit(_check_chunk, chunk, checks))
            if len(pending) >= 2 * workers:
                yield from pending.pop(0).result()
        for future in pending:
            yield from future.result()


def orphan_labels(splits: dict[str, tuple[Path, Path]], paired: set[Path], workspace: str) -> list[Problem]:
    """A ``label_without_image`` problem for every label file no image pairs with.

    Args:
        splits: Each split's (images, labels) folders.
        paired: The label path of every image (filled by ``image_jobs``).
        workspace: The resolved workspace, for the paths shown.

    Returns:
        The problems, in path order per split.
    """
    problems = []
    for _images, labels in splits.values():
        if not labels.is_dir():
            continue
        for label in sorted(labels.rglob("*.txt")):
            if label not in paired:
                problems.append(
                    _problem("label_without_image", display(label, workspace), "label file has no matching image")
                )
    return problems
