"""Helpers shared by every stage: JSON output, the workspace root and the thin CLI wrapper."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from stages.core.cli import REFUSED_EXIT, configure_logging
from stages.core.config import DEFAULT_PARAMS, Params, load_params
from stages.core.errors import PipelineError
from stages.core.lock import check_not_locked_by_another

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: BaseModel | dict[str, Any] | list[Any]) -> None:
    """Write a result model or plain data as indented JSON (atomically)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


_REQUIRED = object()


def read_json(path: Path, *, stage: str | None = None, default: Any = _REQUIRED) -> Any:
    """Read a JSON file written by an earlier stage.

    Args:
        path: The file.
        stage: The stage reading it, for error messages.
        default: Returned when the file does not exist; without it a missing file is an error.

    Raises:
        PipelineError: When the file is missing (and no default was given) or is not JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if default is not _REQUIRED:
            return default
        raise PipelineError("expected output of an earlier stage is missing", stage=stage, path=path) from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"not valid JSON: {exc}", stage=stage, path=path) from None


def stage_main(
    name: str,
    build: Callable[[Params, Path], Any],
    run: Callable[[Any], ResultT],
    argv: list[str] | None = None,
) -> int:
    """The whole CLI of a stage: parse arguments, load params, build the config, run, report.

    Args:
        name: The stage name (as in ``dvc.yaml``).
        build: Turns the params and the workspace root into the stage's typed config.
        run: The stage's ``run(cfg)``.
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 on success, ``REFUSED_EXIT`` (2) when the stage raised a
        :class:`PipelineError`.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=f"Run the '{name}' stage.")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        root = args.params.resolve().parent
        check_not_locked_by_another(root)  # a flow run holds the workspace for all its stages
        params = load_params(args.params)
        cfg = build(params, root)
        run(cfg)
    except PipelineError as exc:
        if exc.stage is None:
            exc.stage = name
        print(f"error: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    return 0


def git_commit(workspace: Path) -> str:
    """The workspace's git commit (with ``+dirty`` when there are uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown (no commit)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
