"""Pushing to the DVC remote: which remote, a warning when it is no backup, and failures as typed errors.

Every push of the project goes through :func:`push` (``python -m stages.core.remotes push``: ``make
demo`` and ``scripts/ci_retrain.sh``), and CI's pull through :func:`pull`. They transfer with DVC's
own API and turn what can go wrong with a remote on another machine into a
:class:`~stages.core.errors.RemoteError` that names the remote and says what to do: no remote set, a server
that does not answer, credentials refused, a connection dropped mid-transfer. A dropped connection is
retried (DVC uploads and downloads each file under a temporary name and renames it once complete,
and skips files already on the other side, so a retry moves only what is missing); the local cache is
only read, never changed, by a push.

Credentials never go into the committed ``.dvc/config``: they go into ``.dvc/config.local`` (``dvc
remote modify --local``), the user's DVC config (``--global``: a fleet worker's fresh clones have no
``config.local``) or the environment (``AWS_ACCESS_KEY_ID``...; SSH keys in ``~/.ssh``).

One module of about 400 lines on purpose: resolving the remote, classifying a failure and retrying
are one path that every push and pull takes, and splitting them would scatter that path.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from stages.core.errors import RemoteError

# Local paths and file:// URLs are folders on this machine; every other scheme is a server.
LOCAL_SCHEMES = ("", "file")
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 2.0

# What to do when a remote refuses the credentials, by URL scheme.
CREDENTIAL_HINTS = {
    "ssh": (
        "check the user and key: `dvc remote modify --local {name} user USER` and "
        "`dvc remote modify --local {name} keyfile ~/.ssh/KEY` (the key's public half must be in the "
        "server's authorized_keys)"
    ),
    "s3": (
        "check the access key: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
        "environment, or `dvc remote modify --local {name} access_key_id ...` and "
        "`dvc remote modify --local {name} secret_access_key ...`"
    ),
}
GENERIC_CREDENTIAL_HINT = "check the remote's credentials in .dvc/config.local (`dvc remote modify --local {name} ...`)"


@dataclass(frozen=True)
class Remote:
    """A DVC remote as this workspace's configuration resolves it.

    Attributes:
        name: Its name in ``.dvc/config`` (or ``.dvc/config.local``).
        url: Its URL; a local folder is an absolute path (DVC resolves relative ones).
    """

    name: str
    url: str

    @property
    def scheme(self) -> str:
        """The URL's scheme (``ssh``, ``s3``...), ``""`` for a local folder."""
        return urlparse(self.url).scheme if "://" in self.url else ""

    @property
    def local_path(self) -> Path | None:
        """The folder on this machine the remote stores into, or ``None`` for a server."""
        if self.scheme not in LOCAL_SCHEMES:
            return None
        return Path(urlparse(self.url).path if self.scheme == "file" else self.url)


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    Attributes:
        remote: The remote pushed to.
        pushed: Files (and run-cache entries) sent; 0 when the remote had everything.
        attempts: How many tries it took (more than 1 after a dropped connection).
        warning: The no-backup warning printed before the push, if any.
    """

    remote: Remote
    pushed: int
    attempts: int
    warning: str | None


def resolve_remote(root: Path, name: str | None = None) -> Remote:
    """The remote ``name`` (default: the workspace's default remote) as DVC's configuration resolves it.

    Reads ``.dvc/config`` merged with ``.dvc/config.local`` and the user's and system's DVC config, as
    ``dvc push`` does. A ``remote://other/path`` URL is followed to the remote it names.

    Raises:
        RemoteError: No default remote is set, or ``name`` is not a configured remote.
    """
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    remotes = config["remote"]
    name = name or config["core"].get("remote")
    if not name:
        raise RemoteError(
            "no default DVC remote: add one with `dvc remote add -d NAME URL` (see README: shared DVC remote)",
            remote=None,
        )
    url = _url(remotes, name)
    return Remote(name=name, url=url)


def _url(remotes: Any, name: str, seen: tuple[str, ...] = ()) -> str:
    if name in seen:
        raise RemoteError(f"DVC remote '{name}' refers to itself through remote:// URLs", remote=name)
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise RemoteError(
            f"DVC remote '{name}' is not configured (configured: {known}): `dvc remote list` shows them",
            remote=name,
        )
    url = str(remotes[name]["url"])
    if url.startswith("remote://"):
        parsed = urlparse(url)
        return _url(remotes, parsed.netloc, (*seen, name)).rstrip("/") + "/" + parsed.path.lstrip("/")
    return url


def inside_workspace(remote: Remote, root: Path) -> bool:
    """Whether the remote stores into a folder inside the workspace ``root``."""
    path = remote.local_path
    if path is None:
        return False
    return path.resolve().is_relative_to(root.resolve())


def no_backup_warning(remote: Remote, root: Path) -> str | None:
    """The warning for a remote inside the workspace, or ``None`` when it lies elsewhere."""
    if not inside_workspace(remote, root):
        return None
    return (
        f"warning: DVC remote '{remote.name}' is {remote.local_path}, inside the workspace: a push there "
        "is no backup (it goes with this folder and this disk) and no other machine can pull from it. "
        f"Point it at a shared server: `dvc remote modify {remote.name} url ssh://HOST/PATH` or "
        "`dvc remote add -d NAME s3://BUCKET/PATH` (README: shared DVC remote)."
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or during, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _named(exc: BaseException, *names: str) -> bool:
    """Whether the exception's class (or a base) has one of these names; libraries imported lazily."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _is_auth_failure(exc: BaseException) -> bool:
    # s3fs turns AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch... into PermissionError;
    # asyncssh raises PermissionDenied; botocore NoCredentialsError when no key is found at all.
    return isinstance(exc, PermissionError) or _named(exc, "PermissionDenied", "NoCredentialsError")


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError | socket.gaierror | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        return True
    return _named(exc, "EndpointConnectionError", "ConnectTimeoutError")


def _is_dropped(exc: BaseException) -> bool:
    # DVC logs each file that failed and then raises UploadError; asyncssh reports a dead connection
    # as ConnectionLost (or "Connection not open" on the next request); the kernel as a reset.
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return True
    return _named(exc, "UploadError", "DownloadError", "ConnectionLost", "ChannelOpenError")


def classify(exc: BaseException, remote: Remote, action: str = "push") -> RemoteError:
    """Turn what a push (or pull) raised into a :class:`RemoteError` naming the remote and what to do.

    Args:
        exc: The exception DVC or the remote's file system raised.
        remote: The remote pushed to (or pulled from).
        action: ``push`` or ``pull``, for the words.

    Returns:
        The error to raise; ``retryable`` is set only for a connection dropped mid-transfer.
    """
    where = f"DVC remote '{remote.name}' ({remote.url})"
    chain = list(_chain(exc))
    detail = str(exc).strip() or type(exc).__name__
    if any(_is_auth_failure(e) for e in chain):
        hint = CREDENTIAL_HINTS.get(remote.scheme, GENERIC_CREDENTIAL_HINT).format(name=remote.name)
        return RemoteError(f"{where} refused the credentials ({detail}): {hint}", remote=remote.name)
    if any(_is_unreachable(e) for e in chain):
        return RemoteError(
            f"{where} cannot be reached ({detail}): check that the server runs and the host and port are right "
            f"(`dvc remote modify {remote.name} url ...`), then {action} again",
            remote=remote.name,
        )
    preposition = "to" if action == "push" else "from"
    if any(_is_dropped(e) for e in chain):
        kept = (
            "the local cache is intact and the remote keeps no partial file under its final name"
            if action == "push"
            else "only the files that arrived whole are in the cache (DVC downloads under temporary names)"
        )
        return RemoteError(
            f"{action} {preposition} {where} did not complete ({detail}): the connection dropped or the server "
            f"failed mid-{action}; {kept}: {action} again to transfer what is missing",
            remote=remote.name,
            retryable=True,
        )
    return RemoteError(f"{action} {preposition} {where} failed: {type(exc).__name__}: {detail}", remote=remote.name)


def push(
    root: Path,
    *,
    remote: str | None = None,
    run_cache: bool = False,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    echo: Callable[[str], None] | None = None,
) -> PushResult:
    """Push the workspace's DVC-tracked outputs (and the run-cache, if asked) to a remote.

    Warns once per push, before it starts, when the remote is a folder inside the workspace: once per
    push rather than per file (DVC pushes thousands) and rather than once per machine (every push to
    it, in every CI log, is one more that is no backup).

    Args:
        root: The workspace (a DVC repository).
        remote: The remote's name (default: the default remote).
        run_cache: Push the run-cache too (``dvc push --run-cache``).
        retries: How many times to push again after a dropped connection.
        backoff_s: Seconds before the first retry, doubled for each next one.
        echo: Where the warning and the retry notes go (default: stderr).

    Returns:
        What was pushed, to which remote, in how many tries.

    Raises:
        RemoteError: No such remote, it cannot be reached, it refuses the credentials, or the push
            still failed after the retries.
    """
    from dvc.repo import Repo

    say = echo or _stderr
    target = resolve_remote(root, remote)
    warning = no_backup_warning(target, root)
    if warning:
        say(warning)

    def attempt() -> int:
        with Repo(str(root)) as repo:
            check_access(repo, target)
            return int(repo.push(remote=target.name, run_cache=run_cache))

    pushed, attempts = _with_retries(attempt, target, "push", retries, backoff_s, say)
    return PushResult(remote=target, pushed=pushed, attempts=attempts, warning=warning)


def pull(
    root: Path,
    *,
    remote: str | None = None,
    run_cache: bool = False,
    allow_missing: bool = False,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    echo: Callable[[str], None] | None = None,
) -> tuple[Remote, int, int]:
    """Pull the workspace's DVC-tracked outputs (and the run-cache, if asked) from a remote.

    The same remote resolution, errors and retries as :func:`push` (DVC downloads each file under a
    temporary name and renames it into the cache once complete, so a retry after a dropped connection
    is safe).

    Args:
        root: The workspace (a DVC repository).
        remote: The remote's name (default: the default remote).
        run_cache: Pull the run-cache too.
        allow_missing: Do not fail for outputs the remote does not have (never pushed yet).
        retries: How many times to pull again after a dropped connection.
        backoff_s: Seconds before the first retry, doubled for each next one.
        echo: Where the retry notes go (default: stderr).

    Returns:
        The remote, how many files were fetched, and in how many tries.

    Raises:
        RemoteError: As for :func:`push`.
    """
    from dvc.repo import Repo

    say = echo or _stderr
    target = resolve_remote(root, remote)

    def attempt() -> int:
        with Repo(str(root)) as repo:
            check_access(repo, target)
            result = repo.pull(remote=target.name, run_cache=run_cache, allow_missing=allow_missing)
        return int(result["stats"]["fetched"])

    fetched, attempts = _with_retries(attempt, target, "pull", retries, backoff_s, say)
    return target, fetched, attempts


def check_access(repo: Any, target: Remote) -> None:
    """Ask the remote for its top folder once, so that refused credentials or a server that does not
    answer fail here, raised as such, rather than as one logged line per file (DVC's fetch logs each
    failed download and raises only a count).

    Args:
        repo: An open ``dvc.repo.Repo``.
        target: The remote.
    """
    odb = repo.cloud.get_remote(name=target.name)
    odb.fs.exists(odb.path)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _with_retries(
    attempt: Callable[[], int],
    target: Remote,
    action: str,
    retries: int,
    backoff_s: float,
    say: Callable[[str], None],
) -> tuple[int, int]:
    """Run ``attempt`` until it succeeds, a failure that a retry cannot help, or ``retries`` retries.

    Returns:
        What ``attempt`` returned and how many tries it took.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(), tries
        except Exception as exc:
            error = classify(exc, target, action)
            if not error.retryable or tries > retries:
                if tries > 1:
                    error.message += f" (after {tries} tries)"
                raise error from None
            delay = backoff_s * 2 ** (tries - 1)
            say(f"retrying in {delay:g} s: {error.message}")
            # The next try opens a new Repo, and with it new connections: DVC creates its file
            # systems with skip_instance_cache, so none of fsspec's cached (dead) ones is reused.
            time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m stages.core.remotes {push,pull} [--run-cache] [--remote NAME] [--retries N]``."""
    from stages.core.cli import REFUSED_EXIT

    parser = argparse.ArgumentParser(prog="python -m stages.core.remotes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, words in (("push", "push to"), ("pull", "pull from")):
        cmd = sub.add_parser(name, help=f"{words} the DVC remote (like `dvc {name}`), failures as clear errors")
        cmd.add_argument("--remote", "-r", help="remote name (default: the default remote)")
        cmd.add_argument("--run-cache", action="store_true", help=f"{name} the run-cache too")
        cmd.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="tries again after a dropped connection")
        cmd.add_argument("--root", type=Path, default=Path.cwd(), help="the workspace (default: the current folder)")
        if name == "pull":
            cmd.add_argument("--allow-missing", action="store_true", help="no error for outputs never pushed")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "push":
            result = push(root, remote=args.remote, run_cache=args.run_cache, retries=args.retries)
            print(
                f"pushed {result.pushed} file(s) to DVC remote '{result.remote.name}' in {result.attempts} attempt(s)"
            )
        else:
            target, fetched, attempts = pull(
                root,
                remote=args.remote,
                run_cache=args.run_cache,
                allow_missing=args.allow_missing,
                retries=args.retries,
            )
            print(f"fetched {fetched} file(s) from DVC remote '{target.name}' in {attempts} attempt(s)")
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # A transfer that may complete when run again exits 1, like a crash; a refusal (credentials, no
        # such remote, no server) exits REFUSED_EXIT: running it again as it is cannot help.
        return 1 if exc.retryable else REFUSED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
