"""The promotion as a transaction: a journal beside production says how to finish or undo it.

The new folder is assembled beside the old one (``.production.staging``); a journal
(``.production.promotion.json``) is written; two renames swap it in; then ``dvc add`` versions it and
the pointer is committed and tagged, ``production-v<N>`` and the model-registry tags (``tags``).
Killed at any point, ``recover`` finishes it or undoes it from the journal: production is then the
old version or the new one, complete, its folder and pointer agreeing, and nothing is left beside it.
A failing ``dvc add`` or commit undoes the swap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Protocol

from pydantic import BaseModel

from stages.core.common import write_json, write_text
from stages.core.config import PromoteParams
from stages.core.errors import PipelineError
from stages.promotion import tags
from stages.promotion.outcome import STAGE, PromoteResult, PromotionCheck


class Site(Protocol):
    """Where a promotion works and its rules (the entry's ``PromoteConfig`` is one)."""

    @property
    def workspace(self) -> Path: ...
    @property
    def production(self) -> Path: ...
    @property
    def report(self) -> Path: ...
    @property
    def options(self) -> PromoteParams: ...


class Journal(BaseModel):
    """What a promotion in progress needs to be finished or undone after a kill."""

    version: int
    old_pointer: str | None  # the text of <production>.dvc before, None when there was none
    result: PromoteResult


class Places(NamedTuple):
    """Where a promotion works, all beside the production folder (same file system: renames are atomic)."""

    staging: Path
    retired: Path
    journal: Path
    pointer: Path


def places(production: Path) -> Places:
    """The staging and retired folders, the journal and the DVC pointer of a production folder."""
    name = production.name
    return Places(
        staging=production.with_name(f".{name}.staging"),
        retired=production.with_name(f".{name}.retired"),
        journal=production.with_name(f".{name}.promotion.json"),
        pointer=production.with_name(f"{name}.dvc"),
    )


def step(name: str) -> None:
    """A point between two steps of a promotion (see ``STEPS``): the tests kill the process at each."""


# Every point ``step`` is called at, in order.
STEPS = ("staged", "journaled", "retired", "swapped", "versioned", "committed", "reported", "cleaned")


def dvc_add(workspace: Path, target: Path) -> None:
    """Version the production folder with DVC (writes ``<target>.dvc``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "add", "--quiet", str(target.relative_to(workspace))],
        cwd=workspace,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PipelineError(f"'dvc add' failed: {proc.stderr.strip()[-500:]}", stage=STAGE, path=target)


def _versioned(site: Site) -> bool:
    return site.options.version_with_dvc and (site.workspace / ".dvc").is_dir()


def swap(site: Site, journal: Journal) -> None:
    """Write the journal, then swap the staged folder in with two renames (the journal says how to go on)."""
    pl = places(site.production)
    write_text(pl.journal, journal.model_dump_json(indent=2))
    step("journaled")
    if site.production.exists():
        site.production.rename(pl.retired)
    step("retired")
    pl.staging.rename(site.production)
    step("swapped")


def roll_back(site: Site, journal: Journal) -> None:
    """Put the previous production and its pointer back; every step may be cut off and run again."""
    pl = places(site.production)
    if not pl.staging.exists() and site.production.exists():
        site.production.rename(pl.staging)  # the new version goes back out
    if pl.retired.exists() and not site.production.exists():
        pl.retired.rename(site.production)
    if journal.old_pointer is None:
        pl.pointer.unlink(missing_ok=True)
    elif not pl.pointer.is_file() or pl.pointer.read_text(encoding="utf-8") != journal.old_pointer:
        write_text(pl.pointer, journal.old_pointer)
    tags.unstage(site.workspace, pl.pointer)  # a commit that failed may have staged the new pointer
    shutil.rmtree(pl.staging, ignore_errors=True)
    pl.journal.unlink(missing_ok=True)


def finish(site: Site, journal: Journal) -> PromoteResult:
    """After the swap: version, commit, report, clean up; a failure to version or commit undoes the swap.

    Raises:
        PipelineError: When ``dvc add`` or the git commit fails (production is then the previous version).
    """
    pl = places(site.production)
    result = journal.result.model_copy()
    try:
        if _versioned(site):
            dvc_add(site.workspace, site.production)
        step("versioned")
        if _versioned(site) and site.options.commit:
            committed = tags.commit(site.workspace, pl.pointer, journal.version)
            if committed is not None:
                result.commit, result.tag = committed
                result.registry_tags = tags.registry_tags(site.workspace, site.production, journal.version)
        step("committed")
    except PipelineError as exc:
        roll_back(site, journal)
        check = PromotionCheck(name="versioned", passed=False, message=exc.message)
        write_json(site.report, result.model_copy(update={"promoted": False, "checks": [*result.checks, check]}))
        raise PipelineError(
            f"not promoted, production is still the previous version: {exc.message}", stage=STAGE, path=exc.path
        ) from None
    write_json(site.report, result)
    step("reported")
    shutil.rmtree(pl.retired, ignore_errors=True)
    step("cleaned")
    pl.journal.unlink(missing_ok=True)
    return result


def recover(site: Site) -> str | None:
    """Finish or undo a promotion that was cut off, and remove what it left; says what it did.

    With a journal: before the swap, or with the new folder moved aside, the promotion is undone
    (production and its pointer are the previous version); after it, it is finished (versioned,
    committed, reported). Without one, the promotion never reached the swap: its staging folder goes.

    Returns:
        What was done, or ``None`` when nothing was left over.
    """
    pl = places(site.production)
    if pl.journal.is_file():
        journal = Journal.model_validate_json(pl.journal.read_text(encoding="utf-8"))
        if pl.staging.exists() or not site.production.exists():
            roll_back(site, journal)
            return f"undid the promotion to version {journal.version} that was cut off before its swap"
        finish(site, journal)
        return f"finished the promotion to version {journal.version} that was cut off after its swap"
    # The names the code before the journal used (``.production.staging-<pid>``), and ours.
    leftovers = (
        sorted(site.production.parent.glob(f".{site.production.name}.*")) if site.production.parent.is_dir() else []
    )
    leftovers = [p for p in leftovers if p.is_dir()]
    if not leftovers:
        return None
    retired = [p for p in leftovers if ".retired" in p.name]
    if not site.production.exists() and len(retired) == 1:  # killed between the old code's two renames
        retired[0].rename(site.production)
        leftovers.remove(retired[0])
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return f"removed what an interrupted promotion left: {', '.join(p.name for p in leftovers) or 'nothing'}"
