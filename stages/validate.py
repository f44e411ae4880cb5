"""Stage ``validate``: check the prepared dataset and report every problem, never touching the input.

Each image is read once, hashed, and decoded once, across processes; cross-file checks (pairs,
duplicate images within and across splits, empty splits, classes missing from train) run on the small
per-image records. Problems met by ``prepare`` while reading VOC/COCO annotations are merged in, and
problems in converted labels are reported against the source annotation file and line. The checks
live in ``stages/data/validation/``; this module holds the stage's config, its order of work and its CLI.

Every problem carries the file (the source file in the input dataset), the line where there is one,
a stable code, a severity, and a message. Any ``error`` stops the chain.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.common import read_json, stage_main, write_json, write_text
from stages.core.config import Params, ValidateParams
from stages.core.errors import ValidationFailed
from stages.data import sample_defaults
from stages.data.datasets import LABEL_SOURCES, SOURCE_PROBLEMS, read_prepared_yaml, split_dirs
from stages.data.validation.images import Checks, check_images, display, image_jobs, orphan_labels
from stages.data.validation.problems import CODES, Problem
from stages.data.validation.report import ValidateResult, render_summary
from stages.data.validation.tally import Tally
from stages.reporting.summary import unsafe_class_names

log = logging.getLogger(__name__)

STAGE = "validate"


class ValidateConfig(BaseModel):
    """Inputs, outputs and thresholds of ``validate``."""

    model_config = ConfigDict(frozen=True)

    data_yaml: Path
    report: Path
    summary: Path
    workspace: Path
    options: ValidateParams
    # Values of other sections made for the sample (stages/data/sample_defaults.py): a warning, never an error.
    sample_values: dict[str, Any] = {}

    @classmethod
    def from_params(cls, params: Params, root: Path) -> ValidateConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            data_yaml=params.paths.resolve("prepared", root) / "data.yaml",
            report=params.paths.resolve("validate_report", root),
            summary=params.paths.resolve("validate_summary", root),
            workspace=root,
            options=params.validate_,
            sample_values=sample_defaults.current_values(params),
        )


def key_names_section(renamed: dict[str, str]) -> str:
    """The summary's section on class names that are renamed as metric keys.

    Args:
        renamed: Each such class name's key (:func:`stages.reporting.summary.unsafe_class_names`).

    Returns:
        Markdown lines, or an empty string when no name needed it.
    """
    if not renamed:
        return ""
    lines = [
        "### Class names as metric keys (warning)",
        "",
        "Characters other than letters, digits, `_` and `-` cannot be part of a key in metrics/quality.json "
        "(DVC joins nested keys with `.`; a `/` or a space breaks a column name); these classes are compared as:",
        "",
        *(f"- `{name}` -> `ap.{key}`" for name, key in renamed.items()),
        "",
    ]
    return "\n".join(lines)


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
    checks = Checks(
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
    tally = Tally(names)
    paired: set[Path] = set()  # label paths of every image, filled while the jobs are handed out
    jobs = image_jobs(splits, prepared, sources, paired)
    for record in check_images(jobs, checks, cfg.options.workers or os.cpu_count() or 1):
        problems.extend(record.problems)
        problems.extend(tally.add(record))
    problems.extend(orphan_labels(splits, paired, workspace))
    problems.extend(tally.dataset_problems(display(cfg.data_yaml, workspace)))

    errors = sum(p.severity == "error" for p in problems)
    result = ValidateResult(
        ok=errors == 0,
        images=tally.images,
        errors=errors,
        warnings=len(problems) - errors,
        problems=problems,
        splits=dict(tally.split_counts),
        instances_per_class=tally.instances_per_class(),
        box_size_px=tally.size_summary(),
    )
    write_json(cfg.report, result)
    # In the summary and the log, not in validate.json: train depends on that file, and a new title
    # must not retrain.
    leftovers = sample_defaults.in_place(names, cfg.sample_values)
    # A warning, never an error: the name is the user's; only its key in metrics/quality.json changes.
    renamed = unsafe_class_names(names)
    summary = (
        render_summary(result, cfg.options.examples_per_code)
        + sample_defaults.summary_section(leftovers)
        + key_names_section(renamed)
    )
    write_text(cfg.summary, summary)
    for line in summary.splitlines():
        log.info("%s", line)
    for item in leftovers:
        log.warning("params made for the sample still in place: %s: %r (%s)", item.key, item.value, item.advice)
    if renamed:
        log.warning(
            "%d class name(s) hold characters a metric key cannot (anything but letters, digits, '_', '-'); "
            "metrics/quality.json and `make compare` show them as: %s",
            len(renamed),
            ", ".join(f"{name!r} -> ap.{key}" for name, key in renamed.items()),
        )
    if errors:
        raise ValidationFailed(
            f"{errors} error(s) in the dataset; see {cfg.report} (codes: "
            f"{', '.join(sorted({p.code for p in problems if p.severity == 'error'}))})",
            errors=errors,
            path=cfg.report,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, ValidateConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
