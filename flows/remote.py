"""Fleet mode's exchange with the remotes: production as the remote holds it, and a run's results pushed.

A fleet deployment's run works in a fresh clone of the project's git remote (``origin``) and shares
results through the DVC remote. Production is the newest production tag ON THE REMOTE, never what the
clone's ref happens to hold: ``sync_production`` fetches it and checks its pointer and folder out
before the chain runs and before promoting, so the no-regression check compares against the model
really in production. ``publish`` pushes what the run made: DVC outputs and run-cache first (a pointer
in git must never name files the DVC remote lacks), then one commit on the branch
``results/<run id>`` holding ``dvc.lock`` and the production pointer, with the promotion's tag, in
ONE atomic git push. A tag that already exists on the remote means another run promoted the same
version first: the push is rejected as a whole, the local tag and promotion commit are withdrawn,
and the promotion is retried once on top of the winner (or refused, naming the winner). The remote's
production is therefore never overwritten and never lost, and nothing of a refused promotion remains.

No Prefect here: the flow (``flows/fleet.py``) and the tests drive these functions directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from flows.dvc_runner import dvc_environment
from stages.core.common import read_json
from stages.core.config import load_params
from stages.core.errors import PipelineError

STAGE = "fleet"
REMOTE = "origin"
# Used only where git has no identity of its own (a fresh worker): a commit needs one.
IDENTITY = ("-c", "user.name=yolo-pipeline fleet", "-c", "user.email=fleet@localhost")
NO_SIGNING = ("-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false")


def production_tag_version(name: str) -> int | None:
    """The production version a git tag names (``production-v3`` -> 3), or ``None`` for another tag.

    The one place that knows how promotion names its tags (``stages/promote.py``): switching to
    another scheme (GTO's ``<artifact>#prod#<N>``) changes this function only.
    """
    match = re.fullmatch(r"production-v(\d+)", name)
    return int(match.group(1)) if match else None


class Published(BaseModel):
    """What ``publish`` pushed."""

    branch: str  # results/<run id>
    commit: str
    tag: str | None  # the production tag pushed with it (None: no new production)
    registry_tags: list[str] = []  # the model registry's tags pushed with it (GTO's format)
    retried_on: str | None = None  # the tag that won a race, when this run promoted again on top of it


def _run(cmd: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=root, env=dvc_environment(), capture_output=True, text=True)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(["git", *args], root)


def redacted(text: str) -> str:
    """``text`` with the credentials of every URL in it (``https://user:token@host``) replaced by ``***``:
    a run's messages end up in Prefect's logs, readable by whoever reads the runs."""
    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


def _git_checked(root: Path, what: str, *args: str) -> str:
    proc = _git(root, *args)
    if proc.returncode != 0:
        said = redacted(f"'git {' '.join(args)}' failed: {proc.stderr.strip()[-800:]}")
        raise PipelineError(f"{what}: {said}", stage=STAGE)
    return proc.stdout


def _remote_url(root: Path) -> str:
    url = _git(root, "remote", "get-url", REMOTE).stdout.strip()
    return redacted(url) if url else f"(no git remote '{REMOTE}')"


def remote_production(root: Path) -> tuple[str, int] | None:
    """The newest production tag on the git remote and its version, or ``None`` when it has none.

    Raises:
        PipelineError: When the remote cannot be read (unreachable, wrong credentials).
    """
    tags = _remote_production_tags(root)
    return max(tags.items(), key=lambda t: t[1]) if tags else None


def _remote_production_tags(root: Path) -> dict[str, int]:
    """Every production tag on the git remote, with its version."""
    proc = _git(root, "ls-remote", "--tags", "--refs", REMOTE)
    if proc.returncode != 0:
        raise PipelineError(
            f"cannot read the git remote {_remote_url(root)}: {redacted(proc.stderr.strip()[-500:])}; check that it is "
            "reachable from this worker and that the worker's git credentials may read it",
            stage=STAGE,
        )
    tags = {}
    for line in proc.stdout.splitlines():
        name = line.split("\t")[-1].removeprefix("refs/tags/")
        version = production_tag_version(name)
        if version is not None:
            tags[name] = version
    return tags


def sync_production(root: Path) -> tuple[str, int] | None:
    """Make the workspace's production the remote's: its newest tag's pointer, and that folder from DVC.

    Every production tag is fetched, so a promotion here numbers after every version ever promoted.

    Returns:
        The remote's production tag and version, or ``None`` when nothing was ever promoted there
        (the workspace's pointer, if any, is then left as its ref holds it).

    Raises:
        PipelineError: When the git remote cannot be read or the production files cannot be pulled.
    """
    params = load_params(root / "params.yaml")
    tags = _remote_production_tags(root)
    if not tags:
        return None
    current = max(tags.items(), key=lambda t: t[1])
    tag = current[0]
    # Every tag, forced: the remote's tags are production (a local one of the same name is a withdrawn
    # promotion), and the model registry's (GTO's) tags too, so the next `#prod#<k>` numbers after theirs.
    refspecs = ["+refs/tags/*:refs/tags/*"]
    _git_checked(root, "fetching the remote's production tags", "fetch", "--quiet", "--no-tags", REMOTE, *refspecs)
    pointer = f"{params.paths.production}.dvc"
    _git_checked(root, f"checking out production {tag}", "checkout", tag, "--", pointer)
    pull = _run([sys.executable, "-m", "dvc", "pull", "--force", pointer], root)
    if pull.returncode != 0:
        raise PipelineError(
            f"cannot pull production {tag} ({pointer}) from the DVC remote: {pull.stderr.strip()[-800:]}; check "
            "that the DVC remote is reachable and that the run that promoted it pushed its files",
            stage=STAGE,
        )
    return current


def dvc_push(root: Path) -> None:
    """``dvc push --run-cache``: every output and the run-cache go to the DVC remote.

    Raises:
        PipelineError: When the DVC remote cannot be written, naming it.
    """
    proc = _run([sys.executable, "-m", "dvc", "push", "--run-cache"], root)
    if proc.returncode != 0:
        remote = _run([sys.executable, "-m", "dvc", "remote", "list"], root).stdout.strip()
        raise PipelineError(
            f"cannot push to the DVC remote ({remote or 'none configured'}): {proc.stderr.strip()[-800:]}; check "
            "that it is reachable from this worker and its credentials there (a fresh clone has no .dvc/config.local: "
            "`dvc remote modify --global` or the environment, e.g. AWS_ACCESS_KEY_ID)",
            stage=STAGE,
        )


def _identity(root: Path) -> tuple[str, ...]:
    return () if _git(root, "config", "user.email").stdout.strip() else IDENTITY


def commit_results(root: Path, run_id: str) -> str:
    """Commit ``dvc.lock`` and the production pointer (whatever changed) as this run's results.

    Always makes a commit (empty when nothing changed), so every run has its own on its branch.

    Returns:
        The commit's hash.
    """
    params = load_params(root / "params.yaml")
    paths = [p for p in ("dvc.lock", f"{params.paths.production}.dvc") if (root / p).is_file()]
    if paths:
        _git_checked(root, "staging the results", "add", "--", *paths)
    message = f"Results of pipeline run {run_id}"
    _git_checked(root, "committing the results", *_identity(root), *NO_SIGNING, "commit", "--quiet", "--no-verify",
                 "--allow-empty", "-m", message)  # fmt: skip
    return _git_checked(root, "reading HEAD", "rev-parse", "HEAD").strip()


def _push(root: Path, branch: str, tags: list[str]) -> tuple[bool, str]:
    """Push the results branch and the promotion's tags atomically; returns (pushed, git's output)."""
    refspecs = [f"HEAD:refs/heads/{branch}"] + [f"refs/tags/{tag}:refs/tags/{tag}" for tag in tags]
    proc = _git(root, "push", "--atomic", "--porcelain", REMOTE, *refspecs)
    return proc.returncode == 0, proc.stdout + proc.stderr


def _lost_race(output: str, tags: list[str]) -> bool:
    """Whether the push was refused because one of the promotion's tags already exists on the remote
    (another run promoted the same version first)."""
    # Only git's own "already exists" on one of those tags: with --atomic every other ref of a refused
    # push reads "[rejected] (atomic push failed)", and a hook's refusal "[remote rejected] (... declined)";
    # those are other failures, to be reported as they are, not a race to retry.
    return any(
        line.startswith("!") and f"refs/tags/{tag}:" in line and "[rejected] (already exists)" in line
        for tag in tags
        for line in output.splitlines()
    )


def _promotion(root: Path) -> dict:
    params = load_params(root / "params.yaml")
    report = params.paths.resolve("promotion_report", root)
    return read_json(report, stage=STAGE) if report.is_file() else {}


def _withdraw(root: Path, base: str, tags: list[str]) -> None:
    """Undo this run's local promotion commit and tags; the working tree keeps the run's files."""
    for tag in tags:
        _git_checked(root, f"withdrawing the local tag {tag}", "tag", "--delete", tag)
    _git_checked(root, "withdrawing the local promotion commit", "reset", "--quiet", "--mixed", base)


def promote(root: Path) -> subprocess.CompletedProcess[str]:
    """Run the promotion (``python -m stages.promote``) in the workspace."""
    return _run([sys.executable, "-m", "stages.promote"], root)


def publish(root: Path, run_id: str, base: str, *, retry: bool = True) -> Published:
    """Push this run's results: DVC outputs and run-cache, then the results branch and the promotion's tag.

    Args:
        root: The workspace (a clone of the git remote).
        run_id: Names the branch, ``results/<run_id>``.
        base: The commit the run started from (before any promotion commit), to withdraw a promotion.
        retry: When another run pushed the same production version first, promote once more on top
            of it (compared against it); when ``False``, refuse instead.

    Returns:
        What was pushed.

    Raises:
        PipelineError: When a remote cannot be reached or written, or when the promotion lost a race
            (and its retry did too, or ``retry`` is off): the message names the version that won.
    """
    branch = f"results/{run_id}"
    dvc_push(root)
    report = _promotion(root)
    tag = report.get("tag") if report.get("promoted") else None
    # production-v<N> and the model registry's (GTO's) <artifact>@v<N>.0.0 and <artifact>#prod#<k>:
    # all or none, so the registry never names a version the pointer tag does not.
    tags = [tag, *report.get("registry_tags", [])] if tag else []
    commit = commit_results(root, run_id)
    pushed, output = _push(root, branch, tags)
    if pushed:
        return Published(branch=branch, commit=commit, tag=tag, registry_tags=tags[1:])
    if not _lost_race(output, tags):
        what = f"{branch} and {tag}" if tag else branch
        raise PipelineError(
            f"git push of {what} to {_remote_url(root)} failed: {redacted(output.strip()[-800:])}; "
            "check that the remote is reachable and that the worker's git credentials may push branches and tags",
            stage=STAGE,
        )
    assert tag is not None
    _withdraw(root, base, tags)
    winner = sync_production(root)
    won = winner[0] if winner else "unknown"
    if not retry:
        raise PipelineError(
            f"another run promoted {won} first: this run's promotion to {tag} is withdrawn (not pushed, local tag "
            f"deleted) and production on the remote stays {won}; run the deployment again to compare against it",
            stage=STAGE,
        )
    again = promote(root)
    if again.returncode != 0:
        errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
        raise PipelineError(
            f"another run promoted {won} first; compared against it, this run's model is not promoted:\n"
            + ("\n".join(errors) or again.stderr.strip()[-800:]),
            stage=STAGE,
        )
    published = publish(root, run_id, base, retry=False)
    return published.model_copy(update={"retried_on": won})
