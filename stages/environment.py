"""Stage ``environment``: the machine fingerprint, checked cheaply when nothing changed.

``dvc.yaml`` runs this stage on every ``dvc repro`` (``always_changed``), so its cost is what a
no-op ``dvc repro`` pays beyond ``dvc status``. The full fingerprint (:mod:`stages.core.fingerprint`)
imports pydantic, validates ``params.yaml``, reads package metadata and asks ``nvidia-smi``: about
half a second. This entry first computes a *machine key* from what the fingerprint is made of but is
cheap to read with the standard library alone: the interpreter, the kernel, the CPU's model and
flags, the core count, ``CUDA_VISIBLE_DEVICES``, the NVIDIA driver's ``/proc`` entries, the
modification times of the folders packages are installed in (installing or removing a package
changes them), the bytes of ``params.yaml`` (so params are validated again whenever they change) and
the code of both modules and of the params models. When the key is the one the last full run
recorded, the fingerprint cannot differ: the stage writes the fingerprint that run recorded (DVC
removes a stage's outputs before running it) and ends there. Otherwise the full fingerprint runs and
records the new key with its result.

The key lives in ``.cache/environment-key.json`` (untracked, like the training checkpoints): it is
a memo of this machine, not a result, and finding it must not need the params it saves reading.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from stages.core.cli import REFUSED_EXIT, configure_logging
from stages.core.errors import PipelineError
from stages.core.lock import check_not_locked_by_another

log = logging.getLogger(__name__)

STAGE = "environment"
KEY_FILE = Path(".cache") / "environment-key.json"
# The code whose change can change the fingerprint or the params verdict: this stage's two modules,
# and the params models that decide what params.yaml may hold (every module of stages/core/config/).
_CORE = Path(__file__).parent / "core"
_CODE = (Path(__file__), _CORE / "fingerprint.py", *sorted((_CORE / "config").glob("*.py")))
_NVIDIA_PROC = Path("/proc/driver/nvidia")


def _cpu_identity() -> str:
    """The first CPU's model name and flags lines (the rest of ``/proc/cpuinfo``, clock speeds
    among it, changes from one read to the next)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ""
    wanted: dict[str, str] = {}
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        name = line.split(":", 1)[0].strip().lower()
        if name in ("model name", "flags", "features") and name not in wanted:
            wanted[name] = line
        if not line.strip() and wanted:
            break  # the end of the first CPU's block
    return "\n".join(wanted[k] for k in sorted(wanted))


def _nvidia_identity() -> str:
    """The driver version and the GPUs it lists in ``/proc``, and where ``nvidia-smi`` is."""
    parts = [str(shutil.which("nvidia-smi"))]
    version = _NVIDIA_PROC / "version"
    if version.is_file():
        parts.append(version.read_text(encoding="utf-8", errors="replace"))
    gpus = _NVIDIA_PROC / "gpus"
    if gpus.is_dir():
        for gpu in sorted(gpus.iterdir()):
            info = gpu / "information"
            parts.append(info.read_text(encoding="utf-8", errors="replace") if info.is_file() else gpu.name)
    return "\n".join(parts)


def _package_folders() -> list[str]:
    """Each package folder on the import path with its modification time: a package installed into
    it or removed from it changes the folder's entries, and so its time. (Only package folders: the
    workspace itself is on the path too, and its time changes whenever DVC rewrites ``dvc.lock``.)"""
    seen = []
    for entry in sys.path:
        if Path(entry).name not in ("site-packages", "dist-packages"):
            continue
        try:
            stat = os.stat(entry or ".")
        except OSError:
            continue
        seen.append(f"{entry}:{stat.st_mtime_ns}")
    return seen


def machine_key(params_file: Path) -> str:
    """A hash of everything the fingerprint is made of, read without leaving the standard library.

    Args:
        params_file: The params file the stage validates (its bytes are part of the key).

    Returns:
        The hex SHA-256 of the key's parts.
    """
    digest = hashlib.sha256()
    parts = [
        sys.version,
        sys.executable,
        " ".join(os.uname()[i] for i in (0, 2, 4)),  # system, release, machine: not the host name
        _cpu_identity(),
        str(os.cpu_count()),
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        _nvidia_identity(),
        *_package_folders(),
    ]
    for part in parts:
        digest.update(part.encode("utf-8", errors="replace") + b"\0")
    for path in (params_file, *_CODE):
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


def recalled(root: Path, key: str) -> tuple[Path, str] | None:
    """The fingerprint file and text the last full run recorded for ``key``, or ``None`` when it
    recorded another key (or no memo this code wrote is there)."""
    try:
        memo = json.loads((root / KEY_FILE).read_text(encoding="utf-8"))
        output = Path(memo["output"])
        if memo["key"] != key or not isinstance(memo["fingerprint"], str):
            return None
        if output.is_absolute() or ".." in output.parts:
            return None  # not a path the full run records: never write outside the workspace
        return root / output, memo["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no memo, or not one this code wrote: run the full fingerprint


def remember(root: Path, key: str, output: Path) -> None:
    """Record the key with the fingerprint the full run just wrote (its text: DVC removes a stage's
    outputs before it runs the stage, so the next cheap run writes it again from here)."""
    record = {"key": key, "output": os.path.relpath(output, root), "fingerprint": output.read_text(encoding="utf-8")}
    _write_atomically(root / KEY_FILE, json.dumps(record, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: end at once when the machine key is unchanged, else fingerprint in full."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{STAGE}", description=f"Run the '{STAGE}' stage.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="fingerprint in full even when nothing changed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    root = args.params.resolve().parent
    key = machine_key(args.params)
    memo = None if args.full else recalled(root, key)
    if memo is not None:
        configure_logging(args.verbose)
        try:
            check_not_locked_by_another(root)  # as every stage: a flow run holds the workspace
        except PipelineError as exc:
            exc.stage = exc.stage or STAGE
            print(f"error: {exc}", file=sys.stderr)
            return REFUSED_EXIT
        output, fingerprint = memo
        current = output.read_text(encoding="utf-8") if output.is_file() else None
        if current != fingerprint:
            _write_atomically(output, fingerprint)  # removed by DVC before the run, or edited by hand
        log.info("machine, libraries and params unchanged since the last full fingerprint (%s)", KEY_FILE)
        return 0

    # The full fingerprint: pydantic, params validation, package metadata, nvidia-smi.
    from stages.core import fingerprint
    from stages.core.common import stage_main

    def run_and_remember(cfg: fingerprint.EnvironmentConfig) -> fingerprint.EnvironmentResult:
        result = fingerprint.run(cfg)
        remember(root, key, cfg.output)
        return result

    rest = ["--params", str(args.params)] + (["--verbose"] if args.verbose else [])
    return stage_main(STAGE, fingerprint.EnvironmentConfig.from_params, run_and_remember, rest)


if __name__ == "__main__":
    sys.exit(main())
