"""Parallel trials: each runs ``dvc exp run`` in a private clone of the workspace, and its experiment
is pushed back to the workspace (and on to ``tune.git_remote``) where everyone sees it.

Why clones: two ``dvc exp run`` in one folder would overwrite each other's ``params.yaml``, outputs
and ``dvc.lock``, and DVC's own workspace lock lets only one run at a time. A ``git worktree``
shares the experiment refs DVC runs with (``refs/exps/exec/...``) between the folders; a clone does
not. Each clone (``.dvc/tmp/tune-workers/w<k>``, one per worker, reused by its next trial):

- is checked out at the workspace's commit, with the workspace's uncommitted changes copied over
  (tracked files changed or deleted, untracked files not ignored), so every trial starts from what
  ``dvc exp run`` in the workspace would have run, as with one worker;
- gets the untracked starting weights (``paths.weights``, git-ignored ``*.pt``) copied;
- uses the workspace's DVC cache (``cache.dir`` in its ``config.local``), so trials share the
  dataset, the run-cache and each other's results, and ``dvc checkout`` fills the clone from it;
- is held with its own workspace lock (``stages/core/lock.py``) while its trial runs: it is private;
  the study holds the workspace itself.

After a trial that DVC saved as an experiment (complete or pruned), ``dvc exp push --no-cache
origin <exp>`` from the clone puts its commit under the workspace's ``refs/exps`` (the cache is
already shared), so ``dvc exp show`` in the workspace lists it. With ``tune.git_remote`` set the
workspace then pushes it there (``dvc exp push <remote> <exp>``: git refs plus the outputs to the
default DVC remote), from where ``dvc exp pull`` brings it to any clone. A clone whose trial failed
or was killed is made again for its next trial: nothing a killed DVC left there is reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from flows.dvc_runner import dvc_environment
from flows.tuning import TrialOutcome, TrialPlan, TuneConfig, WorkspaceTrials
from stages.core.config import Params
from stages.core.errors import TuneError
from stages.core.lock import workspace_lock

log = logging.getLogger(__name__)

CLONES = Path(".dvc") / "tmp" / "tune-workers"  # DVC's own temp folder: ignored by git and DVC
_GIT_TIMEOUT_S = 120  # a remote that does not answer in this long is reported, not waited for


def _tool(cmd: list[str], cwd: Path, what: str, timeout_s: float | None = _GIT_TIMEOUT_S) -> str:
    """Run ``cmd`` (git or DVC) in ``cwd``; its output (``timeout_s`` None: no limit).

    Raises:
        TuneError: Naming ``what`` failed, with the command's last error line.
    """
    env = dvc_environment()
    env["GIT_TERMINAL_PROMPT"] = "0"  # a remote asking for a password fails instead of waiting for one
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TuneError(f"{what}: no answer in {timeout_s or 0:.0f} s ({' '.join(cmd[-3:])})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.lower().startswith(("error", "fatal"))] or lines[-1:] or ["no output"]
        raise TuneError(f"{what}: {errors[0]}")
    return proc.stdout


def _git(args: list[str], cwd: Path, what: str) -> str:
    return _tool(["git", *args], cwd, what)


def _dvc(args: list[str], cwd: Path, what: str) -> str:
    # No time limit: DVC moves data (a dataset checked out into a clone, outputs pushed to a remote),
    # which takes as long as the data is large; git's commands only talk to a remote and are limited.
    return _tool([sys.executable, "-m", "dvc", *args], cwd, what, timeout_s=None)


def check_git_remote(workspace: Path, remote: str) -> str:
    """Refuse a study whose ``tune.git_remote`` is missing or cannot be reached, before any trial.

    Returns:
        The remote's URL.

    Raises:
        TuneError: Naming the remote, and what to do (add it, fix its URL or credentials).
    """
    try:
        url = _git(["remote", "get-url", remote], workspace, f"no git remote '{remote}'").strip()
    except TuneError:
        raise TuneError(
            f"tune.git_remote is '{remote}' but the workspace has no such git remote: add it "
            f"(git remote add {remote} URL) or set tune.git_remote to ''",
            key="tune.git_remote",
        ) from None
    try:
        _git(["ls-remote", "--heads", remote], workspace, f"git remote '{remote}' ({url}) cannot be reached")
    except TuneError as exc:
        raise TuneError(
            f"{exc.message}: check its URL (git remote -v) and your credentials for it; no trial was run",
            key="tune.git_remote",
        ) from None
    return url


def push_experiment(workspace: Path, remote: str, experiment: str) -> str | None:
    """``dvc exp push <remote> <experiment>`` from ``workspace``: git refs and outputs (default DVC remote).

    Returns:
        ``None`` once pushed, else what failed and how to push it later (the trial keeps its result).
    """
    try:
        _dvc(["exp", "push", remote, experiment], workspace, f"dvc exp push {remote} {experiment} failed")
    except TuneError as exc:
        return (
            f"{exc.message}; the experiment is kept here: check git remote '{remote}' and the DVC remote "
            f"(URL, credentials), then run dvc exp push {remote} {experiment}"
        )
    return None


def uncommitted(workspace: Path) -> list[tuple[str, bytes | None]]:
    """The workspace's changes against its commit: each changed or untracked (not ignored) file with
    its bytes, and each deleted one with ``None``.

    Raises:
        TuneError: When the workspace is not the root of its git repository (trials clone the repository).
    """
    top = Path(_git(["rev-parse", "--show-toplevel"], workspace, "not a git repository").strip())
    if top.resolve() != workspace.resolve():
        raise TuneError(
            f"parallel trials clone the workspace's git repository, whose root is {top}, not the workspace: "
            "run with --workers 1, or make the workspace a repository of its own"
        )
    out = _git(["status", "--porcelain=v1", "-z", "--untracked-files=all"], workspace, "git status failed")
    entries = out.split("\0")
    changes: list[tuple[str, bytes | None]] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename or copy: the next entry is where it came from
            if status[0] == "R":
                changes.append((entries[i], None))
            i += 1
        file = workspace / path
        changes.append((path, file.read_bytes() if file.is_file() else None))
    return changes


class TrialWorkspaces:
    """Runs each trial in a free clone of the workspace (one per worker); called from several threads.

    Args:
        cfg: The study's settings (its workspace is the one cloned).
        params: The workspace's params (where the starting weights are).
        logger: Where DVC's output goes.
        workers: How many clones (trials at a time).
    """

    def __init__(
        self, cfg: TuneConfig, params: Params, logger: logging.Logger | logging.LoggerAdapter, workers: int
    ) -> None:
        self.cfg = cfg
        self.params = params
        self.logger = logger
        self.workspace = cfg.workspace
        self.root = cfg.workspace / CLONES
        self.commit = _git(
            ["rev-parse", "--verify", "HEAD^{commit}"], self.workspace, "parallel trials need a git commit"
        ).strip()
        self.changes = uncommitted(self.workspace)
        self.cache_dir = _dvc(["cache", "dir"], self.workspace, "dvc cache dir failed").strip()
        self.weights = params.paths.resolve("weights", self.workspace)
        self._free: queue.Queue[int] = queue.Queue()
        self._ready: set[int] = set()  # clones fit for a next trial
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()
        self._push = threading.Lock()  # one push at a time into the workspace's repository
        for slot in range(workers):
            self._free.put(slot)
        shutil.rmtree(self.root, ignore_errors=True)  # what an earlier study left

    def __call__(self, plan: TrialPlan) -> TrialOutcome:
        """Run ``plan`` in a free clone; its experiment ends up in the workspace (and ``tune.git_remote``).

        Returns:
            The trial's outcome; failed too when its clone could not be made or its experiment not
            brought back to the workspace (the error says which).
        """
        slot = self._free.get()
        ok = False
        try:
            try:
                clone = self._prepare(slot)
            except TuneError as exc:
                return TrialOutcome(state="failed", error=f"its workspace could not be made: {exc}")
            with workspace_lock(clone, 0, f"tune trial {plan.number} of study {self.cfg.tune.study}") as token:
                verdict = clone / self.cfg.evaluate_metrics.relative_to(self.workspace)
                own = self.cfg.model_copy(update={"workspace": clone, "evaluate_metrics": verdict})
                runner = WorkspaceTrials(own, self.logger, token, on_start=lambda proc: self._started(slot, proc))
                outcome = runner(plan)
            with self._lock:
                self._procs.pop(slot, None)
            if outcome.state == "failed":  # DVC saves no experiment for a failed run
                return outcome
            outcome = self._publish(clone, plan, outcome)
            ok = outcome.state != "failed"
            return outcome
        finally:
            if ok:
                self._ready.add(slot)
            else:
                self._ready.discard(slot)
            self._free.put(slot)

    def _started(self, slot: int, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs[slot] = proc

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop every running trial: SIGTERM to each DVC process group, SIGKILL after ``grace_s``."""
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Remove the clones (their outputs are in the shared cache, their experiments in the workspace)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _prepare(self, slot: int) -> Path:
        """The clone of ``slot`` at the workspace's commit and changes, its outputs checked out."""
        clone = self.root / f"w{slot}"
        if slot not in self._ready:
            shutil.rmtree(clone, ignore_errors=True)
            clone.parent.mkdir(parents=True, exist_ok=True)
            _git(["clone", "--quiet", "--no-checkout", str(self.workspace), str(clone)], self.workspace, "git clone")
        # Back to the commit: the last trial left its params.yaml and dvc.lock; its outputs (ignored) stay.
        _git(["checkout", "--quiet", "--force", "--detach", self.commit], clone, "git checkout")
        if slot not in self._ready:
            # Only now: before the checkout the clone has no .dvc/, and DVC would write to the
            # repository it finds above it, the workspace's.
            _dvc(["config", "--local", "cache.dir", self.cache_dir], clone, "dvc config cache.dir")
        _git(["clean", "--quiet", "--force", "-d"], clone, "git clean")
        for path, data in self.changes:
            target = clone / path
            if data is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        if self.weights.is_dir():  # git-ignored starting weights: a clone has none of them
            for src in self.weights.rglob("*"):
                dest = clone / src.relative_to(self.workspace)
                if src.is_file() and not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest)
        # Outputs missing from the cache are left to dvc exp run (it reruns their stages).
        _dvc(["checkout", "--quiet", "--allow-missing"], clone, "dvc checkout")
        return clone

    def _publish(self, clone: Path, plan: TrialPlan, outcome: TrialOutcome) -> TrialOutcome:
        """Bring the trial's experiment into the workspace, and on to ``tune.git_remote``."""
        with self._push:
            try:
                _dvc(
                    ["exp", "push", "--no-cache", "origin", plan.experiment],
                    clone,
                    f"experiment {plan.experiment} could not be brought back to the workspace",
                )
            except TuneError as exc:
                return outcome.model_copy(update={"state": "failed", "error": exc.message})
            remote = self.cfg.tune.git_remote
            error = push_experiment(self.workspace, remote, plan.experiment) if remote else None
        return outcome.model_copy(update={"error": error}) if error else outcome
