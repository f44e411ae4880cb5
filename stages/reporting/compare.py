"""The table ``make compare`` prints: experiments side by side on the params and numbers that differ.

``dvc exp show --only-changed`` falls short in three ways once the data is a user's own:

- at 80 classes the ``ap.<class>`` columns alone are thousands of characters wide: here they are
  opt-in (``per_class``), and stay in ``metrics/quality.json`` for ``dvc exp show --json`` and
  ``dvc metrics diff``, so experiments keep the same keys whatever the table shows;
- when every experiment ties on a number, ``--only-changed`` hides it, the headline numbers
  (:data:`HEADLINE`) included: those are always shown;
- an experiment that stopped before a stage (a tuning trial runs up to ``evaluate``) inherits the
  baseline's ``dvc.lock`` entry for that stage, so DVC shows the baseline's latency and size as the
  experiment's. Here a metrics file counts only when the stage that wrote it ran on what the
  experiment produced (:func:`stale_stages`); otherwise its numbers are shown as absent (``-``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Always shown, even when every experiment has the same value: what experiments are compared on.
HEADLINE = ("gate", "map50", "map50_95")
PER_CLASS_PREFIX = "ap."
ABSENT = "-"


@dataclass(frozen=True)
class Revision:
    """One row: a baseline commit, the workspace, or an experiment.

    Attributes:
        name: What the row is called (the experiment's name, the branch, or a short commit).
        rev: The commit (or ``workspace``) whose ``dvc.lock`` tells which stages ran.
        experiment: True for an experiment, False for a baseline or the workspace.
        params: Flattened params (``train.lr0``).
        metrics: Flattened numbers of each metrics file, by file.
    """

    name: str
    rev: str
    experiment: bool
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys joined with ``.``, as DVC names its columns.

    Args:
        data: A params or metrics file's content.
        prefix: The parent keys so far.

    Returns:
        Each leaf value by its dotted key.
    """
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _files(data: Mapping[str, Any] | None, kind: str) -> dict[str, dict[str, Any]]:
    found = ((data or {}).get(kind)) or {}
    return {path: flatten(entry.get("data") or {}) for path, entry in found.items()}


def revisions(shown: Iterable[Mapping[str, Any]]) -> list[Revision]:
    """The rows of ``dvc exp show --json``: each baseline, then its experiments.

    Args:
        shown: The parsed JSON.

    Returns:
        One revision per baseline and per experiment that has data (queued or failed ones have none).
    """
    rows = []
    for commit in shown:
        entries = [(commit, False)]
        entries += [(rev, True) for exp in commit.get("experiments") or [] for rev in exp.get("revs") or []]
        for entry, experiment in entries:
            data = entry.get("data")
            if not data:
                continue
            rev = str(entry.get("rev") or data.get("rev"))
            params = {}
            for path, values in _files(data, "params").items():
                # params.yaml's keys as they are (train.lr0); another params file's under its name.
                params.update(values if path == "params.yaml" else {f"{path}:{k}": v for k, v in values.items()})
            name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
            rows.append(Revision(name, rev, experiment, params, _files(data, "metrics")))
    return rows


def _hash(entry: Mapping[str, Any]) -> str | None:
    return entry.get("md5") or entry.get("hash")


def stale_stages(lock: Mapping[str, Any]) -> set[str]:
    """The stages of a ``dvc.lock`` whose recorded run did not use what the other stages recorded.

    A stage is stale when one of its dependencies is another stage's output with a different hash
    (that stage ran again since, as ``train`` and ``evaluate`` in a trial that stopped there), or is
    an output of a stale stage.

    Args:
        lock: The parsed ``dvc.lock``.

    Returns:
        The names of the stale stages.
    """
    stages = lock.get("stages") or {}
    produced = {out["path"]: (name, _hash(out)) for name, s in stages.items() for out in s.get("outs") or []}
    stale: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, stage in stages.items():
            if name in stale:
                continue
            for dep in stage.get("deps") or []:
                owner = produced.get(dep["path"])
                if owner and (owner[0] in stale or owner[1] != _hash(dep)):
                    stale.add(name)
                    changed = True
                    break
    return stale


def measured_files(lock: Mapping[str, Any], metrics: Iterable[str]) -> set[str]:
    """The metrics files whose numbers belong to this revision.

    Args:
        lock: The revision's parsed ``dvc.lock``.
        metrics: The metrics files shown for it.

    Returns:
        The files written by a stage that ran on this revision's own outputs; a file no stage of
        the lock wrote (a stage that never ran) is not one of them.
    """
    stale = stale_stages(lock)
    owners = {
        out["path"]: name for name, stage in (lock.get("stages") or {}).items() for out in stage.get("outs") or []
    }
    return {path for path in metrics if path in owners and owners[path] not in stale}


def _cell(value: Any) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return ABSENT if math.isnan(value) else f"{value:.5g}"
    return str(value)


def table(rows: list[Revision], locks: Mapping[str, Mapping[str, Any]], per_class: bool = False) -> list[list[str]]:
    """The cells of the comparison, header first.

    Args:
        rows: The revisions (:func:`revisions`).
        locks: Each revision's parsed ``dvc.lock``, by ``rev``.
        per_class: Whether to show the ``ap.<class>`` columns.

    Returns:
        The header and one row per revision: the params and numbers that differ between rows, the
        headline numbers always, ``-`` for a number the revision did not measure.
    """
    cells: list[dict[str, str]] = []
    params: list[str] = []
    numbers: list[str] = []
    for row in rows:
        own = measured_files(locks.get(row.rev) or {}, row.metrics)
        values = {key: _cell(value) for key, value in row.params.items()}
        for key in row.params:
            if key not in params:
                params.append(key)
        for path, found in row.metrics.items():
            for key, value in found.items():
                if key not in numbers:
                    numbers.append(key)
                if path in own:
                    values[key] = _cell(value)
        cells.append(values)

    def shown(key: str, headline: bool) -> bool:
        if key.startswith(PER_CLASS_PREFIX) and not per_class:
            return False
        return headline or len({values.get(key, ABSENT) for values in cells}) > 1

    columns = [k for k in params if shown(k, False)] + [k for k in numbers if shown(k, k in HEADLINE)]
    out = [["Experiment", *columns]]
    for row, values in zip(rows, cells, strict=True):
        name = f"  {row.name}" if row.experiment else row.name
        out.append([name, *(values.get(key, ABSENT) for key in columns)])
    return out


def render(cells: list[list[str]]) -> str:
    """Aligned plain text: names left, values right, two spaces between columns.

    Args:
        cells: The header and rows (:func:`table`).

    Returns:
        The table with a rule under the header and a line saying what ``-`` means.
    """
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [line(cells[0]), rule, *(line(row) for row in cells[1:])]
    return "\n".join([*lines, f"{ABSENT}: not measured by that experiment (its stage did not run for it)"]) + "\n"
