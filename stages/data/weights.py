"""Fetch Ultralytics' released pretrained weights once, pinned by URL and SHA-256, into ``weights/``.

``python -m stages.data.weights fetch yolo11n`` (or ``make weights MODEL=yolo11n``) is the only
code of the project that opens a URL, and only when a person runs it: no stage, flow or test of the
chain imports it, so the pipeline stays offline at run time. The file is streamed to a temporary file
beside its destination and hashed while it arrives; it gets its name only when its size and SHA-256
match the pinned values, so a failed or tampered download leaves nothing in ``weights/``. Then it is
tracked with ``dvc add`` (under the workspace lock, as ``make sample-data`` does), so every other
machine gets the same bytes with ``dvc pull`` and never downloads them.

URLs must be HTTPS, redirects included. ``--url`` or ``YOLO_WEIGHTS_MIRROR`` (a base URL; the file name
is appended) point at a mirror; the pinned hash still decides. Plain HTTP is accepted for a loopback
host only, which is what the tests serve from.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from stages.core.cli import REFUSED_EXIT, configure_logging
from stages.core.common import file_sha256
from stages.core.config import DEFAULT_PARAMS, load_params
from stages.core.errors import PipelineError, WeightsError, WeightsHashMismatch
from stages.core.lock import hold_workspace

log = logging.getLogger(__name__)

MIRROR_ENV = "YOLO_WEIGHTS_MIRROR"
CHUNK = 1 << 20
# The release YOLO11 was published in; its assets are immutable once released.
RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.3.0"


@dataclass(frozen=True)
class PinnedWeights:
    """One released checkpoint: its file name, where it is published, its SHA-256 and size in bytes."""

    file: str
    url: str
    sha256: str
    size: int


# Digests and sizes are the Git LFS pointers of Ultralytics' own Hugging Face repository
# Ultralytics/YOLO11 (files uploaded by the Ultralytics team, Oct 2024), read offline:
#  - yolo11n.pt: blob page huggingface.co/Ultralytics/YOLO11/blob/refs%2Fpr%2F1/yolo11n.pt (commit 5599de6);
#    the size from another upload's LFS pointer with the same digest (huggingface.co/Omarrran/yolo_onnx_hnm,
#    commit 39f1767); a third-party script pins the same digest for the file Ultralytics itself downloads
#    from its GitHub release, so this one is known to be the release asset's.
#  - yolo11s.pt: commit 064ec96; yolo11m.pt: commit bbc85af; yolo11l.pt: commit bee92e2 (same repository).
#    That these equal the GitHub assets byte for byte was not verified here (no network): a difference is
#    refused as a hash mismatch, never accepted.
# yolo11x.pt is left out: no digest from Ultralytics could be found offline, and none is invented.
PINNED: dict[str, PinnedWeights] = {
    "yolo11n": PinnedWeights(
        "yolo11n.pt",
        f"{RELEASE}/yolo11n.pt",
        "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
        5613764,
    ),
    "yolo11s": PinnedWeights(
        "yolo11s.pt",
        f"{RELEASE}/yolo11s.pt",
        "85a76fe86dd8afe384648546b56a7a78580c7cb7b404fc595f97969322d502d5",
        19313732,
    ),
    "yolo11m": PinnedWeights(
        "yolo11m.pt",
        f"{RELEASE}/yolo11m.pt",
        "d5ffc1a674953a08e11a8d21e022781b1b23a19b730afc309290bd9fb5305b95",
        40684120,
    ),
    "yolo11l": PinnedWeights(
        "yolo11l.pt",
        f"{RELEASE}/yolo11l.pt",
        "9ebd0e09d59811db4b1d61e2bc6730649608b1ac47f8dd01e2da6bca7c20023f",
        51387343,
    ),
}


class FetchResult(BaseModel):
    """What ``fetch`` did: the file, its digest, whether it was downloaded and whether DVC now tracks it."""

    path: Path
    sha256: str
    downloaded: bool
    dvc_file: Path | None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Refuse anything but HTTPS, or HTTP to a loopback host (tests, a local mirror).

    Raises:
        WeightsError: For another scheme, or plain HTTP to a host that is not loopback.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise WeightsError(f"refusing {url!r}: weights are fetched over HTTPS only (plain HTTP only from loopback)")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub sends release assets to its storage host) only to URLs ``check_url`` accepts."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def source_url(pinned: PinnedWeights, url: str | None = None) -> str:
    """The URL to fetch from: ``url`` if given, else ``$YOLO_WEIGHTS_MIRROR/<file>``, else the pinned one."""
    if url:
        return url
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{pinned.file}"
    return pinned.url


def download(
    url: str, dest: Path, *, sha256: str, size: int, timeout_s: float = 30.0, deadline_s: float = 1800.0
) -> None:
    """Stream ``url`` into ``dest``, which appears only when the body has ``size`` bytes and SHA-256 ``sha256``.

    Args:
        url: HTTPS URL (HTTP for a loopback host).
        dest: The final path; a temporary file beside it is written, then renamed.
        sha256: The expected hex digest.
        size: The expected size in bytes; a longer body is cut off there.
        timeout_s: Limit on connecting and on each read.
        deadline_s: Limit on the whole download.

    Raises:
        WeightsError: Unreachable host, an HTTP error status, a truncated or oversized body, a timeout.
        WeightsHashMismatch: The body's digest is not ``sha256``.
    """
    check_url(url)
    opener = urllib.request.build_opener(_CheckedRedirects())
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with opener.open(
                    urllib.request.Request(url, headers={"User-Agent": "yolo-pipeline"}), timeout=timeout_s
                ) as resp:
                    declared = resp.headers.get("Content-Length")
                    if declared is not None and declared.isdigit() and int(declared) != size:
                        raise WeightsError(
                            f"{url} announces {declared} bytes, the pinned file has {size}: not the pinned asset",
                            path=dest,
                        )
                    while chunk := resp.read(min(CHUNK, size + 1 - received)):
                        received += len(chunk)
                        if received > size:
                            raise WeightsError(f"{url} sent more than the pinned {size} bytes; stopped", path=dest)
                        digest.update(chunk)
                        out.write(chunk)
                        if time.monotonic() - started > deadline_s:
                            raise WeightsError(f"{url}: not finished after {deadline_s:.0f} s; stopped", path=dest)
            except urllib.error.HTTPError as exc:
                raise WeightsError(f"{url}: HTTP {exc.code} {exc.reason}", path=dest) from exc
            except http.client.IncompleteRead as exc:
                raise WeightsError(
                    f"{url}: connection closed after {received + len(exc.partial)} of {size} bytes (truncated)",
                    path=dest,
                ) from exc
            except urllib.error.URLError as exc:
                raise WeightsError(f"cannot reach {url}: {exc.reason}", path=dest) from exc
            except (OSError, http.client.HTTPException) as exc:  # a read timeout, a reset connection
                raise WeightsError(f"{url}: {type(exc).__name__}: {exc} after {received} bytes", path=dest) from exc
            if received != size:
                raise WeightsError(f"{url}: connection closed after {received} of {size} bytes (truncated)", path=dest)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise WeightsHashMismatch(f"{url} is not the pinned file", expected=sha256, actual=actual, path=dest)
        os.replace(tmp, dest)  # same folder: atomic, so dest is either absent or complete
    finally:
        tmp.unlink(missing_ok=True)


def _dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise WeightsError("dvc not found beside this Python or on PATH; install the project (make install)")
    return found


def dvc_add(workspace: Path, path: Path) -> Path:
    """``dvc add`` the file through ``python -m stages.core.lock``, as the Makefile does (under the hold
    ``fetch`` already has, its token passed on); returns its ``.dvc`` file.

    Raises:
        WeightsError: When ``workspace`` is no DVC repository or ``dvc add`` fails.
    """
    if not (workspace / ".dvc").is_dir():
        raise WeightsError(f"{workspace} is not a DVC repository (no .dvc/): run 'dvc init' or pass --no-dvc")
    rel = path.resolve().relative_to(workspace.resolve())
    cmd = [sys.executable, "-m", "stages.core.lock", "--workspace", str(workspace), "--owner", "weights fetch"]
    cmd += ["--", _dvc_executable(), "add", "--quiet", rel.as_posix()]
    # The lock runs as `python -m stages.core.lock`: this package must import whatever the workspace is.
    code_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WeightsError(f"'dvc add {rel}' failed: {(proc.stderr or proc.stdout).strip()[-2000:]}", path=path)
    return path.with_name(path.name + ".dvc")


def fetch(
    name: str,
    weights_dir: Path,
    workspace: Path,
    *,
    url: str | None = None,
    add_to_dvc: bool = True,
    timeout_s: float = 30.0,
    lock_timeout_s: float = 60.0,
    table: dict[str, PinnedWeights] | None = None,
) -> FetchResult:
    """Make ``weights_dir/<file>`` the pinned checkpoint ``name``, downloading it only when absent.

    Args:
        name: A key of :data:`PINNED`, e.g. ``yolo11n``.
        weights_dir: ``paths.weights`` resolved.
        workspace: The workspace root (the DVC repository).
        url: Fetch from here instead (a mirror); the pinned digest still decides.
        add_to_dvc: Track the file with ``dvc add`` afterwards.
        timeout_s: Limit on connecting and on each read.
        lock_timeout_s: How long to wait for a pipeline run holding the workspace (with ``add_to_dvc``).
        table: The pinned table (tests pass their own).

    Returns:
        The file, its digest, whether it was downloaded, its ``.dvc`` file.

    Raises:
        WeightsError: Unknown name, unreachable host, HTTP error, truncated body, ``dvc add`` failure.
        WeightsHashMismatch: The download, or a file already there, is not the pinned one.
        WorkspaceBusy: A pipeline run holds the workspace for longer than ``lock_timeout_s``.
    """
    table = PINNED if table is None else table
    if name not in table:
        raise WeightsError(f"no pinned weights named {name!r}; known: {', '.join(sorted(table))}")
    pinned = table[name]
    dest = weights_dir / pinned.file
    if add_to_dvc and not (workspace / ".dvc").is_dir():
        raise WeightsError(f"{workspace} is not a DVC repository (no .dvc/): run 'dvc init' or pass --no-dvc")
    # Held from the download to the dvc add: no pipeline run reads weights/ (a train dep) half-written.
    held = hold_workspace(workspace, lock_timeout_s, "weights fetch") if add_to_dvc else contextlib.nullcontext()
    with held:
        if add_to_dvc:
            # A fetch killed outright (SIGKILL: no cleanup ran) leaves its partial file, which would
            # change train's dependency hash; none can be in progress while the lock is held.
            for stale in weights_dir.glob(f".{pinned.file}.*.part"):
                stale.unlink()
        downloaded = False
        if dest.exists():
            actual = file_sha256(dest)
            if actual != pinned.sha256:
                # Someone's own file: never overwritten.
                raise WeightsHashMismatch(
                    f"{dest} exists and is not the pinned {name}; move it away to fetch",
                    expected=pinned.sha256,
                    actual=actual,
                    path=dest,
                )
            log.info("%s already present with the pinned sha256; nothing downloaded", dest)
        else:
            src = source_url(pinned, url)
            log.info("fetching %s from %s (%d bytes)", name, src, pinned.size)
            download(src, dest, sha256=pinned.sha256, size=pinned.size, timeout_s=timeout_s)
            downloaded = True
        dvc_file = dvc_add(workspace, dest) if add_to_dvc else None
    return FetchResult(path=dest, sha256=pinned.sha256, downloaded=downloaded, dvc_file=dvc_file)


def next_steps(result: FetchResult, workspace: Path) -> list[str]:
    """What the person runs next: commit the pointer, push the bytes, point training at the file."""
    rel = result.path.resolve().relative_to(workspace.resolve()).as_posix()
    lines = []
    if result.dvc_file is not None:
        # dvc add writes a .gitignore beside the file unless git ignores it already (the project's does).
        gitignore = result.path.parent / ".gitignore"
        extra = f" {gitignore.resolve().relative_to(workspace.resolve()).as_posix()}" if gitignore.is_file() else ""
        lines += [f"git add {rel}.dvc{extra}", "dvc push"]
    lines.append(f"set in params.yaml:  train.model: {rel}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.data.weights fetch NAME``: fetch pinned pretrained weights, explicitly."""
    parser = argparse.ArgumentParser(prog="python -m stages.data.weights", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the pinned models")
    get = sub.add_parser("fetch", help="download one pinned model into paths.weights and dvc add it")
    get.add_argument("name", help=f"one of: {', '.join(sorted(PINNED))}")
    get.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    get.add_argument("--url", help=f"fetch from this URL instead (a mirror; also ${MIRROR_ENV}=<base URL>)")
    get.add_argument("--no-dvc", action="store_true", help="do not 'dvc add' the file")
    get.add_argument("--timeout", type=float, default=30.0, help="seconds per connect and read (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.command == "list":
        for key, pinned in sorted(PINNED.items()):
            print(f"{key}  {pinned.size:>10} bytes  sha256 {pinned.sha256}  {pinned.url}")
        return 0
    try:
        root = args.params.resolve().parent
        params = load_params(args.params)
        result = fetch(
            args.name,
            params.paths.resolve("weights", root),
            root,
            url=args.url,
            add_to_dvc=not args.no_dvc,
            timeout_s=args.timeout,
            lock_timeout_s=params.orchestration.lock_timeout_s,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    print(f"{'fetched' if result.downloaded else 'already present'}: {result.path} (sha256 {result.sha256})")
    print("next:")
    for line in next_steps(result, root):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
