"""What a promotion reports (``reports/promotion.json``) and the error a refused one raises."""

from __future__ import annotations

from pydantic import BaseModel

from stages.core.errors import PipelineError

STAGE = "promote"


class PromotionRefused(PipelineError):
    """The candidate model does not qualify for production; carries every failed check."""


class PromotionCheck(BaseModel):
    """One promotion rule and its outcome."""

    name: str
    passed: bool
    message: str


class PromoteResult(BaseModel):
    """What ``reports/promotion.json`` holds (``version``: the new one, or production's when unchanged)."""

    promoted: bool
    unchanged: bool = False
    version: int | None
    checks: list[PromotionCheck]
    data_version: str | None
    production: str
    commit: str | None = None  # the git commit holding the new pointer (None: not a git work tree)
    tag: str | None = None  # production-v<N>
    # The model-registry tags of the commit (<name>@v<N>.0.0, <name>#prod#<counter>): what to push with it.
    registry_tags: list[str] = []
    classes: list[str] = []  # the candidate's class names, in id order
    line: int | None = None  # its production line (1, then one more for each --new-line)
    new_line: str | None = None  # the reason given with --new-line, when this promotion started the line
