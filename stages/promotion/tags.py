"""Every promoted version is a git commit of the pointer and a tag, so no checkout loses it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from stages.core.errors import PipelineError
from stages.promotion.outcome import STAGE

TAG_PREFIX = "production-v"
# Used only where git has no identity of its own (a fresh CI runner): a commit needs one.
FALLBACK_IDENTITY = ("-c", "user.name=yolo-pipeline promotion", "-c", "user.email=promotion@localhost")


def _git(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)


def _git_checked(workspace: Path, *args: str) -> str:
    proc = _git(workspace, *args)
    if proc.returncode != 0:
        raise PipelineError(f"'git {' '.join(args)}' failed: {proc.stderr.strip()[-500:]}", stage=STAGE)
    return proc.stdout.strip()


def in_git(workspace: Path) -> bool:
    """Whether the workspace is inside a git work tree."""
    return _git(workspace, "rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def latest_tag(workspace: Path) -> tuple[str, int] | None:
    """The newest production tag (``production-v<N>``) and its N, or ``None`` when there is none."""
    if not in_git(workspace):
        return None
    numbers = []
    for name in _git(workspace, "tag", "--list", f"{TAG_PREFIX}*").stdout.split():
        suffix = name.removeprefix(TAG_PREFIX)
        if suffix.isdigit():
            numbers.append(int(suffix))
    return (f"{TAG_PREFIX}{max(numbers)}", max(numbers)) if numbers else None


def _pointer_md5(text: str | None) -> str | None:
    outs = (yaml.safe_load(text) or {}).get("outs", []) if text else []
    return outs[0].get("md5") if outs else None


def tag_mismatch(workspace: Path, pointer: Path) -> str | None:
    """Why the workspace's pointer is not the one the newest production tag holds, or ``None`` when it is.

    A ``dvc exp apply`` of an experiment begun before the last promotion, or a checkout of an older
    commit, puts an older pointer back; promoting over it would compare against, and number after, a
    version that is no longer the latest.
    """
    latest = latest_tag(workspace)
    if latest is None:
        return None
    tag, _ = latest
    rel = pointer.relative_to(workspace).as_posix()
    # ./: relative to the workspace, which may be a subfolder of the repository.
    shown = _git(workspace, "show", f"{tag}:./{rel}")
    recorded = _pointer_md5(shown.stdout) if shown.returncode == 0 else None
    current = _pointer_md5(pointer.read_text(encoding="utf-8")) if pointer.is_file() else None
    if recorded is None or recorded == current:
        return None
    return (
        f"{rel} ({current}) is not the latest promoted version, tag {tag} ({recorded}): an experiment applied "
        f"or a checkout put an older one back; restore it with 'git checkout {tag} -- {rel}' and "
        f"'dvc checkout {rel}'"
    )


def commit(workspace: Path, pointer: Path, version: int) -> tuple[str, str] | None:
    """Commit the pointer (only it, and its folder's ``.gitignore``) and tag the commit.

    Idempotent: a pointer already committed is not committed again, an existing tag is kept.

    Returns:
        The commit and the tag, or ``None`` outside a git work tree.
    """
    if not in_git(workspace):
        return None
    paths = [pointer.relative_to(workspace).as_posix()]
    ignore = pointer.parent / ".gitignore"
    if ignore.is_file() and _git(workspace, "status", "--porcelain", "--", str(ignore)).stdout.strip():
        paths.append(ignore.relative_to(workspace).as_posix())
    identity = () if _git(workspace, "config", "user.email").stdout.strip() else FALLBACK_IDENTITY
    if _git(workspace, "status", "--porcelain", "--", *paths).stdout.strip():
        _git_checked(workspace, "add", "--", *paths)
        # --no-verify: the commit holds the pointer alone, and a hook must not leave production half done.
        message = f"Promote production version {version}"
        # No hooks and no signing: a worker or CI has no gpg agent, and a refused commit would undo the promotion.
        unsigned = ("-c", "commit.gpgsign=false")
        _git_checked(workspace, *identity, *unsigned, "commit", "--quiet", "--no-verify", "-m", message, "--", *paths)
    tag = f"{TAG_PREFIX}{version}"
    if _git(workspace, "rev-parse", "--quiet", "--verify", f"refs/tags/{tag}").returncode != 0:
        _git_checked(workspace, "-c", "tag.gpgsign=false", "tag", tag, "HEAD")
    return _git_checked(workspace, "rev-parse", "HEAD"), tag


def unstage(workspace: Path, path: Path) -> None:
    """Take ``path`` out of git's index again (a commit that failed may have staged it)."""
    if in_git(workspace):
        _git(workspace, "reset", "--quiet", "--", path.relative_to(workspace).as_posix())
