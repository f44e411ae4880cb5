"""Production lines: a candidate replaces production only when it detects the same classes.

A model's class ids mean its class names, in order: a model of other classes is not a better or worse
version of production, it is another model, and comparing the two mAPs says nothing. Production's
``metadata.json`` records its class names (``classes``, from the prepared ``data.yaml``) and its line
(``line``, 1 for the first); a candidate whose names differ is refused with both named and the command
that starts a new line (``NEW_LINE_COMMAND``), which promotes it as the next version without the
no-regression check and leaves every earlier version where its tags point. Metadata written before
classes were recorded are read from production's ``model.pt`` where it loads; otherwise the candidate
is refused with the same command. The same classes on another data version is retraining on new
data: it is recorded, never refused.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.core.errors import PipelineError
from stages.data.datasets import read_prepared_yaml
from stages.promotion.outcome import PromotionCheck

log = logging.getLogger(__name__)

CHECK = "same classes"
NEW_LINE_COMMAND = 'python -m stages.promote --new-line "<reason>"'
# How many names a message shows of a list, and how many differences it lists.
_SHOWN = 5


class Lineage(BaseModel):
    """The candidate's production line: its classes, the line's number, why and where it began."""

    classes: list[str]
    number: int = 1
    reason: str | None = None  # why the line began (``--new-line``); None for the first line
    started_at: int | None = None  # the version the line began with; None for the first line


def candidate_classes(data_yaml: Path) -> list[str]:
    """The class names, in id order, of the prepared ``data.yaml`` the candidate was trained on.

    Raises:
        DatasetError: When the file is missing or not a prepared ``data.yaml``.
    """
    return list(read_prepared_yaml(data_yaml)["names"])


def checkpoint_classes(model: Path, workspace: Path) -> list[str] | None:
    """The class names an Ultralytics checkpoint holds, in id order, or ``None`` where it cannot be read.

    Loaded with the pipeline's safe loading (``stages.core.runtime.load_checkpoint``): production comes
    from the DVC remote, and its file is never unpickled unchecked. Ultralytics' settings are the
    workspace's (``stages.core.runtime.import_ultralytics``).
    """
    from stages.core.runtime import import_ultralytics, load_checkpoint

    if not model.is_file():
        return None
    try:
        import_ultralytics(workspace)
        ckpt = load_checkpoint(model)
        # A checkpoint saved mid-training holds the model in "ema"; a finished one in "model".
        model_object = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
        names = getattr(model_object, "names", None)
    except (PipelineError, TypeError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError):
        log.warning("cannot read class names from %s", model, exc_info=True)
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, list | tuple) else None


def production_classes(production: Path, metadata: dict[str, Any], workspace: Path) -> tuple[list[str] | None, str]:
    """Production's class names and where they were read: its metadata, else its checkpoint; ``None`` when neither."""
    if isinstance(metadata.get("classes"), list):
        return [str(n) for n in metadata["classes"]], "metadata.json"
    return checkpoint_classes(production / "model.pt", workspace), "model.pt (metadata.json records no classes)"


def _shown(names: list[str]) -> str:
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def differences(candidate: list[str], production: list[str]) -> str:
    """The counts and the first differing ids of two class lists.

    For example ``80 vs 3 classes; id 0: 'person' vs 'circle'; ...``; an id only one list has shows
    ``-`` on the other side.
    """

    def name(names: list[str], i: int) -> str:
        return repr(names[i]) if i < len(names) else "-"

    ids = range(max(len(candidate), len(production)))
    diffs = [
        f"id {i}: {name(candidate, i)} vs {name(production, i)}"
        for i in ids
        if name(candidate, i) != name(production, i)
    ]
    more = [f"... ({len(diffs) - _SHOWN} more)"] if len(diffs) > _SHOWN else []
    return "; ".join([f"{len(candidate)} vs {len(production)} classes", *diffs[:_SHOWN], *more])


def _data_change(metadata: dict[str, Any], data_version: str | None) -> str:
    before = metadata.get("data_version")
    if data_version is None or before is None:
        return "data version not recorded"
    if before == data_version:
        return f"same data version ({data_version})"
    return f"data version {before} -> {data_version} (retrained on new data)"


def lineage_check(
    candidate: list[str],
    production: Path,
    metadata: dict[str, Any] | None,
    data_version: str | None,
    new_line: str | None = None,
    *,
    workspace: Path,
) -> tuple[PromotionCheck, Lineage]:
    """Whether the candidate continues production's line, and the line it would be promoted on.

    Args:
        candidate: The candidate's class names, in id order.
        production: The production folder (its ``model.pt`` is read when its metadata records no classes).
        metadata: Production's ``metadata.json``, or ``None`` when there is no production model.
        data_version: The candidate's dataset hash (recorded in the message when it differs from production's).
        new_line: The reason given with ``--new-line``, or ``None``.
        workspace: The workspace root (where Ultralytics' settings are, to read a checkpoint).

    Returns:
        The check (named ``CHECK``; when it fails, or a new line begins, the no-regression check is not
        made: the models detect different classes) and the line.
    """
    if metadata is None:
        message = "no production model yet" + (f"; first production line: {new_line}" if new_line else "")
        return PromotionCheck(name=CHECK, passed=True, message=message), Lineage(classes=candidate, reason=new_line)
    version = metadata.get("version")
    tag = f"production-v{version}"
    line = metadata.get("line") or {}
    current = Lineage(
        classes=candidate,
        number=int(line.get("number", 1)),
        reason=line.get("reason"),
        started_at=line.get("started_at"),
    )
    known, source = production_classes(production, metadata, workspace)
    kept = (
        f"production v{version} stays retrievable: git tag {tag}, and registry version v{version}.0.0 where "
        "dvc.yaml declares the artifact"
    )
    if new_line is not None:
        if known == candidate:
            message = (
                f"--new-line refused: the candidate detects production v{version}'s {len(known)} classes, so it "
                "continues its line; promote it without --new-line (the no-regression check applies)"
            )
            return PromotionCheck(name=CHECK, passed=False, message=message), current
        what = differences(candidate, known) if known is not None else f"production v{version}'s classes unknown"
        message = f"new production line {current.number + 1} ({new_line}): {what}; {kept}"
        new = Lineage(classes=candidate, number=current.number + 1, reason=new_line)
        return PromotionCheck(name=CHECK, passed=True, message=message), new
    if known is None:
        message = (
            f"production v{version} records no class names and its model.pt cannot be read for them, so the "
            f"candidate's {len(candidate)} classes ({_shown(candidate)}) cannot be checked against it; start a new "
            f"production line with '{NEW_LINE_COMMAND}' ({kept})"
        )
        return PromotionCheck(name=CHECK, passed=False, message=message), current
    if known != candidate:
        message = (
            f"the candidate's classes ({_shown(candidate)}) are not production v{version}'s ({_shown(known)}): "
            f"{differences(candidate, known)}; a model of other classes is not compared with production, it "
            f"starts a new production line: '{NEW_LINE_COMMAND}' ({kept})"
        )
        return PromotionCheck(name=CHECK, passed=False, message=message), current
    data = _data_change(metadata, data_version)
    message = f"same {len(known)} classes as production v{version} (read from its {source}); {data}"
    return PromotionCheck(name=CHECK, passed=True, message=message), current
