"""``make compare``: experiments side by side (stages/reporting/compare.py says why not plain ``dvc exp show``).

Usage: ``python scripts/compare.py [--per-class] [dvc exp show options such as -A or --rev]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.reporting.compare import render, revisions, table


def _lock(rev: str) -> dict:
    """The ``dvc.lock`` of a commit, or of the workspace; empty when there is none."""
    if rev == "workspace":
        path = Path("dvc.lock")
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    proc = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True, check=False)
    return (yaml.safe_load(proc.stdout) or {}) if proc.returncode == 0 else {}


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", action="store_true", help="also show each class's AP50-95 (ap.<class>)")
    args, rest = parser.parse_known_args(argv)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", *rest], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(f"dvc exp show failed:\n{proc.stderr}")
        return proc.returncode
    rows = revisions(json.loads(proc.stdout))
    if not rows:
        sys.stderr.write("no experiments to compare (dvc exp show found none)\n")
        return 1
    sys.stdout.write(render(table(rows, {row.rev: _lock(row.rev) for row in rows}, per_class=args.per_class)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
