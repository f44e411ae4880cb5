"""A throw-away copy of the project for end-to-end tests, with helpers to edit params and run it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, built_once, venv_env

# Its sitecustomize.py refuses and logs every connection or name lookup beyond this machine, in
# every Python process a workspace starts (see that file).
NETGUARD = Path(__file__).resolve().parents[1] / "netguard"
GUARDED_ENV = ("PATH", "PYTHONPATH", "NETGUARD_LOG")  # what a test passes on to processes it starts itself

COPY = [
    "stages",
    "flows",
    "weights",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    "prefect.toml",
    "prefect.yaml",
    ".gitignore",
]
# Written by the first stage that imports Ultralytics (stages/core/runtime.py), with absolute paths in it.
ULTRALYTICS_SETTINGS = Path(".cache/ultralytics/Ultralytics/settings.json")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "ci",
    "GIT_AUTHOR_EMAIL": "ci@example.invalid",
    "GIT_COMMITTER_NAME": "ci",
    "GIT_COMMITTER_EMAIL": "ci@example.invalid",
}
TINY = {
    "train": {"epochs": 1, "imgsz": 64, "batch": 8},
    "evaluate": {"min_map50": 0.0, "min_map50_95": 0.0, "batch": 8},
    "export": {"parity_images": 4},
    # One thread: with two test workers on two cores, a runtime's second thread spins waiting for a core the
    # other worker holds (the benchmark took 11.5 CPU-s a run in the suite, 3.5 alone; its numbers go unused).
    "benchmark": {"iterations": 5, "warmup": 1, "rounds": 3, "sweep_iterations": 5, "threads": 1},
}


# Every call that can send to another machine; execve too, to show the trace followed every process.
TRACED_CALLS = ("connect", "sendto", "sendmsg", "sendmmsg", "execve")


def no_network_trace(log: Path) -> list[str] | None:
    """A command prefix that runs a command with no network (its own network namespace) and every
    socket call that could leave the machine traced to ``log``, threads and children included.

    Returns ``None`` where this machine cannot: no ``strace`` or ``unshare``, or user namespaces or
    ptrace not allowed (checked by running ``true`` under the same prefix).
    """
    if not (shutil.which("strace") and shutil.which("unshare")):
        return None
    prefix = ["unshare", "-rn", "strace", "-f", "-qq", "--seccomp-bpf", "-e", "signal=none"]
    prefix += ["-e", f"trace={','.join(TRACED_CALLS)}", "-o"]
    probe = subprocess.run([*prefix, os.devnull, "true"], capture_output=True, text=True)
    return [*prefix, str(log)] if probe.returncode == 0 else None


def network_calls(log: Path) -> list[str]:
    """The traced calls that tried to reach another machine over IPv4 or IPv6.

    A DNS lookup is one of them: with nothing to answer it locally, the resolver sends to the
    nameserver (port 53). Unix sockets (the name service cache, processes talking to each other)
    stay on the machine and are not counted.
    """
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for line in lines if "AF_INET" in line]


class Workspace:
    """A project copy with helpers to edit params and run the entry points."""

    def __init__(self, root: Path, prefect_home: Path) -> None:
        self.root = root
        self.env = venv_env()
        self.env["PREFECT_HOME"] = str(prefect_home)
        self.env.pop("PREFECT_API_URL", None)
        # Beside the workspace, not in it: nothing there may see it (git add -A, DVC's hashes).
        self.netguard_log = root.parent / f"{root.name}.netguard.log"
        self.env["NETGUARD_LOG"] = str(self.netguard_log)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), self.env.get("PYTHONPATH")]))

    def network_attempts(self) -> list[str]:
        """Every connection or lookup beyond this machine that a process of this workspace tried."""
        return self.netguard_log.read_text().splitlines() if self.netguard_log.is_file() else []

    @classmethod
    def create(cls, root: Path, prefect_home: Path) -> Workspace:
        """Copy the project into ``root`` (a git repo with DVC) with tiny params; no dataset yet."""
        for name in COPY:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, root / name)
        (root / ".dvc").mkdir()
        shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
        shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the custom plot templates
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        ws = cls(root, prefect_home)
        params = ws.params()
        for section, values in TINY.items():
            params[section].update(values)
        ws.set_params(params)
        return ws

    @classmethod
    def with_sample_data(
        cls, tmp_path_factory: Any, name: str, train: int = 16, val: int = 8, size: int = 64, repro: bool = False
    ) -> Workspace:
        """A new workspace with the generated sample dataset, tracked by DVC (and reproduced, if asked).

        Built once per test run for each set of arguments (see ``shared_template``) and copied here,
        so that modules asking for the same workspace do not each generate and reproduce it.
        """
        template = shared_template(tmp_path_factory, train=train, val=val, size=size, repro=repro)
        root = tmp_path_factory.mktemp(name)
        # symlinks=True: a link stays a link (none today: DVC's cache links are copies by default).
        shutil.copytree(template.root, root, symlinks=True, dirs_exist_ok=True)
        # Ultralytics' settings name the template's absolute folders: the copy's first stage writes its own.
        (root / ULTRALYTICS_SETTINGS).unlink(missing_ok=True)
        ws = cls(root, tmp_path_factory.mktemp("prefect-home"))
        # What the template's processes did counts for this copy too (its repro is this copy's): the
        # network attempts, the system-call trace and the record of the repro, beside the copy.
        for src, dest in (
            (template.netguard_log, ws.netguard_log),
            (template.strace_log, ws.strace_log),
            (template.repro_record, ws.repro_record),
        ):
            if src.is_file():
                shutil.copy(src, dest)
        return ws

    @property
    def strace_log(self) -> Path:
        """Where the system-call trace of the template's ``dvc repro`` lies (beside the workspace)."""
        return self.root.parent / f"{self.root.name}.strace.log"

    @property
    def repro_record(self) -> Path:
        """Where the record of the template's ``dvc repro`` lies (beside the workspace)."""
        return self.root.parent / f"{self.root.name}.repro.json"

    def reproduced(self) -> dict[str, Any]:
        """How the ``dvc repro`` that made this workspace went: ``returncode``, ``ran`` (the stages
        DVC ran), ``output`` (its last lines), ``trace_log`` (its system-call trace, or ``None``
        where this machine cannot trace; see ``no_network_trace``)."""
        record = json.loads(self.repro_record.read_text())
        record["ran"] = set(record["ran"])
        record["trace_log"] = self.strace_log if record["traced"] else None
        return record

    @classmethod
    def build_sample_data(
        cls, root: Path, prefect_home: Path, train: int, val: int, size: int, repro: bool
    ) -> Workspace:
        """Create the workspace ``with_sample_data`` copies: the project, its sample data, DVC-tracked."""
        ws = cls.create(root, prefect_home)
        gen = ws.run(
            "-m",
            "stages.data.sample_data",
            "--out",
            "data/dataset",
            "--train",
            str(train),
            "--val",
            str(val),
            "--size",
            str(size),
        )
        assert gen.returncode == 0, gen.stderr
        ws.add_data()
        if repro:
            # With no network at all, and every socket call of every process and thread traced, where
            # the machine allows it (test_pipeline reads the trace and this record).
            trace = no_network_trace(ws.strace_log)
            proc, ran = ws.repro(trace=trace)
            output = proc.stdout[-3000:] + proc.stderr[-3000:]
            record = {"returncode": proc.returncode, "ran": sorted(ran), "output": output, "traced": bool(trace)}
            ws.repro_record.write_text(json.dumps(record))
            assert proc.returncode == 0, output
        return ws

    def add_data(self) -> None:
        """Track ``data/dataset`` with DVC."""
        add = self.run("-m", "dvc", "add", "-q", "data/dataset")
        assert add.returncode == 0, add.stderr

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, data: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def edit(self, section: str, **values: Any) -> dict[str, Any]:
        """Change params; returns the params as they were, for restoring."""
        before = self.params()
        after = json.loads(json.dumps(before))
        after.setdefault(section, {}).update(values)
        self.set_params(after)
        return before

    @contextlib.contextmanager
    def edited(self, section: str, **values: Any) -> Iterator[None]:
        """Params changed for the ``with`` block only."""
        before = self.edit(section, **values)
        try:
            yield
        finally:
            self.set_params(before)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900
        )

    def git(self, *args: str) -> str:
        """Run git in the workspace (failing the test when it fails); returns its output."""
        proc = subprocess.run(
            ["git", *args], cwd=self.root, env={**self.env, **GIT_ENV}, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def start_training(self) -> subprocess.Popen[bytes]:
        """Start ``dvc repro train`` in the background, in its own process group."""
        return subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "train"],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_for_epochs(self, proc: subprocess.Popen[bytes], epochs: int, timeout_s: float = 300) -> Path:
        """Wait until the unfinished training run in ``paths.train_runs`` has logged ``epochs`` epochs
        and written its first checkpoint.

        Returns:
            That run's ``results.csv``. Kills the training and fails the test on timeout.
        """
        runs = self.root / self.params()["paths"]["train_runs"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for results in runs.glob("*/results.csv"):
                logged = len(results.read_text().splitlines()) - 1  # a header, then one line per epoch
                if logged >= epochs and (results.parent / "weights" / "last.pt").is_file():
                    time.sleep(0.5)  # let the checkpoint being written finish
                    return results
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"training did not log {epochs} epochs in time (exit code {proc.poll()})")

    def repro(self, *targets: str, trace: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """Run ``dvc repro`` (under ``trace``, a command prefix, when given); returns it and the stages DVC ran."""
        if trace is None:
            proc = self.run("-m", "dvc", "repro", *targets)
        else:
            proc = subprocess.run(
                [*trace, sys.executable, "-m", "dvc", "repro", *targets],
                cwd=self.root,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=900,
            )
        return proc, set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))

    def json(self, rel: str) -> Any:
        return json.loads((self.root / rel).read_text())


def _code_digest() -> str:
    """sha256 over what ``Workspace.create`` copies: a template is never reused across code changes."""
    digest = hashlib.sha256()
    for name in COPY:
        src = REPO / name
        files = (
            sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if src.is_dir() else [src]
        )
        for path in files:
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def shared_template(tmp_path_factory: Any, **args: Any) -> Workspace:
    """The workspace ``Workspace.build_sample_data(**args)`` makes, built once per test run
    (``tests.conftest.built_once``), keyed by the arguments and the code copied, so no run reuses another's."""
    key = hashlib.sha256(json.dumps([args, sorted(TINY.items()), _code_digest()], sort_keys=True).encode())

    def build(folder: Path) -> None:
        (folder / "ws").mkdir()
        (folder / "prefect-home").mkdir()
        Workspace.build_sample_data(folder / "ws", folder / "prefect-home", **args)

    folder = built_once(tmp_path_factory, f"template-{key.hexdigest()[:16]}", build)
    return Workspace(folder / "ws", folder / "prefect-home")
