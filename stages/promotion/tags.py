"""Every promoted version is a git commit of the pointer and tags, so no checkout loses it.

Two kinds of tags on the promotion commit. ``production-v<N>`` (lightweight) numbers the versions and
is what the checks compare the pointer with. When ``dvc.yaml`` declares the production folder as an
artifact (``artifacts:``), the model-registry tags DVC reads (GTO's format) go beside it: the version
``<name>@v<N>.0.0`` and the stage assignment ``<name>#prod#<counter>``, both annotated (GTO skips
lightweight tags), so ``dvc artifacts get <repo> <name> --stage prod`` (or ``--rev v<N>.0.0``) fetches
it on any machine with the git and DVC remotes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import yaml

from stages.core.errors import PipelineError
from stages.promotion.outcome import STAGE

TAG_PREFIX = "production-v"
# The model-registry stage a promotion assigns (what `dvc artifacts get --stage prod` asks for).
REGISTRY_STAGE = "prod"
# GTO's artifact name (gto/constants.py `name`): DVC refuses to register any other.
REGISTRY_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-/_]*[a-zA-Z0-9])?")
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


def registry_name(workspace: Path, production: Path) -> str | None:
    """The model-registry name of the production folder, as tags spell it, or ``None`` when it has none.

    It is the ``dvc.yaml`` artifact whose ``path`` is the production folder; a workspace in a subfolder
    of its repository prefixes it with that folder (GTO's ``<dir>=<name>``, the ``<dir>:<name>`` DVC takes).

    Raises:
        PipelineError: When ``dvc.yaml`` cannot be read, names the folder twice or gives it a name GTO refuses.
    """
    dvc_yaml = workspace / "dvc.yaml"
    if not dvc_yaml.is_file():
        return None
    try:
        artifacts = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("artifacts") or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"dvc.yaml is not valid YAML: {exc}", stage=STAGE, path=dvc_yaml) from None
    rel = PurePosixPath(production.relative_to(workspace).as_posix())
    names = [
        name
        for name, spec in artifacts.items()
        if isinstance(spec, dict) and PurePosixPath(str(spec.get("path", ""))) == rel
    ]
    if not names:
        return None
    if len(names) > 1:
        raise PipelineError(
            f"dvc.yaml declares {rel} as more than one artifact ({', '.join(names)}): keep one",
            stage=STAGE,
            path=dvc_yaml,
        )
    name = str(names[0])
    if not REGISTRY_NAME.fullmatch(name):
        raise PipelineError(
            f"artifact name '{name}' is not one DVC's model registry accepts (letters, digits, '-', '_', '/')",
            stage=STAGE,
            path=dvc_yaml,
            key=f"artifacts.{name}",
        )
    prefix = _git(workspace, "rev-parse", "--show-prefix").stdout.strip().rstrip("/") if in_git(workspace) else ""
    return f"{prefix}={name}" if prefix else name


def _counter(workspace: Path, name: str) -> int:
    """The next counter of GTO's tags for ``name``: one more than any tag of that artifact carries."""
    found = [0]
    for tag in _git(workspace, "tag", "--list", f"{name}[@#]*").stdout.split():
        if match := re.fullmatch(rf"{re.escape(name)}[@#].*#(\d+)", tag):
            found.append(int(match[1]))
    return max(found) + 1


def registry_tags(workspace: Path, production: Path, version: int) -> list[str]:
    """Tag HEAD (the promotion commit) as version ``v<version>.0.0`` of the registry artifact, in stage prod.

    Idempotent, as a promotion finished again after a kill must be: an existing version tag is kept, and
    HEAD already assigned to the stage is not assigned again.

    Returns:
        The version and stage tags of HEAD; empty when ``dvc.yaml`` declares no artifact at ``production``.
    """
    name = registry_name(workspace, production)
    if name is None or not in_git(workspace):
        return []
    identity = () if _git(workspace, "config", "user.email").stdout.strip() else FALLBACK_IDENTITY
    unsigned = ("-c", "tag.gpgsign=false")
    message = f"Promote production version {version}"
    version_tag = f"{name}@v{version}.0.0"
    if _git(workspace, "rev-parse", "--quiet", "--verify", f"refs/tags/{version_tag}").returncode != 0:
        _git_checked(workspace, *identity, *unsigned, "tag", "--annotate", "-m", message, version_tag, "HEAD")
    pattern = f"{name}#{REGISTRY_STAGE}#*"
    assigned = _git(workspace, "tag", "--points-at", "HEAD", "--list", pattern).stdout.split()
    if not assigned:
        stage_tag = f"{name}#{REGISTRY_STAGE}#{_counter(workspace, name)}"
        _git_checked(workspace, *identity, *unsigned, "tag", "--annotate", "-m", message, stage_tag, "HEAD")
        assigned = [stage_tag]
    return [version_tag, *assigned]
