"""The report of ``validate``: the model of ``reports/validate.json`` and its markdown summary for people."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from stages.data.validation.problems import CODES, Problem


class ValidateResult(BaseModel):
    """The report written to ``reports/validate.json`` (the ``validate`` stage's result)."""

    ok: bool
    images: int
    errors: int
    warnings: int
    problems: list[Problem]
    splits: dict[str, int]
    instances_per_class: dict[str, dict[str, int]]
    box_size_px: dict[str, float]


def _example(problem: Problem) -> str:
    """One problem as a summary example: its file and line, and for converted labels which annotation and image."""
    where = f"`{problem.file}{':' + str(problem.line) if problem.line else ''}`"
    if problem.ref:
        where += f" {problem.ref}"
    if problem.image:
        where += f" (image `{Path(problem.image).name}`)"
    return where


def _examples(items: list[Problem]) -> str:
    """The examples of one code: each place, or where they all share one place, that place once and what each says.

    Dataset-wide problems (e.g. a class absent from train) all point at ``data.yaml``: naming it five times
    tells nothing, their messages (which class) do.
    """
    places = [_example(p) for p in items]
    if len(items) > 1 and len(set(places)) == 1:
        return f"{places[0]}: " + "; ".join(p.message for p in items)
    return ", ".join(places)


def render_summary(result: ValidateResult, examples: int) -> str:
    """A markdown section for people: verdict, problems grouped by code, class balance and box sizes.

    Args:
        result: The report.
        examples: How many files to name per problem code.

    Returns:
        The markdown text.
    """
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
            shown = _examples(items[:examples])
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
