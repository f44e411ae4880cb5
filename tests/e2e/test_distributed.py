"""End to end: training jobs on this machine through the real launcher (torchrun, c10d, gloo).

Each "node" is its own copy of the workspace, as on two machines, and is started the way the README
tells a Slurm user: ``python -m stages.training.job`` on every node, with ``MASTER_ADDR``/``MASTER_PORT``
exported and Slurm's ``SLURM_NODEID``/``SLURM_JOB_NUM_NODES``/``SLURM_JOB_ID`` (``--same-host``: both
nodes are this machine, so the loopback endpoint is allowed). The head's job runs ``dvc repro train``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

TRAIN_IMAGES = 16
VAL_IMAGES = 8
BATCH = 8  # global: 2 per process with 2 nodes x 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.with_sample_data(tmp_path_factory, "ws-head", train=TRAIN_IMAGES, val=VAL_IMAGES)
    proc, _ = ws.repro("validate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws.edit("train", epochs=2, batch=BATCH, workers=0, warmup_epochs=0.0)
    return ws


def _with_nodes(ws: Workspace, nnodes: int = 2, nproc: int = 2, **dist: object) -> None:
    params = ws.params()
    params["train"]["distributed"].update(
        {"nnodes": nnodes, "nproc_per_node": nproc, "join_timeout_s": 60, "max_restarts": 0, **dist}
    )
    ws.set_params(params)


def _second_node(ws: Workspace, root: Path, **train: object) -> Workspace:
    """A copy of the head's workspace as another machine would hold it, with ``train`` params changed."""
    shutil.copytree(ws.root, root, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    node = Workspace(root, root.parent / f"prefect-{root.name}")
    if train:
        node.edit("train", **train)
    return node


def _job(
    ws: Workspace, node_rank: int, port: int, env: dict[str, str] | None = None, command: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """``python -m stages.training.job`` as the README's Slurm recipe starts it on each node."""
    slurm = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "SLURM_NODEID": str(node_rank),
             "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": f"job{port}"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "stages.training.job", "--params", "params.yaml", "--same-host", *command],
        cwd=ws.root,
        env={**ws.env, **slurm, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"did not finish in {timeout_s} s:\n{out[-4000:]}") from None
    return out


def _fresh(ws: Workspace) -> None:
    for rel in ("models", "metrics", "plots", "reports/train.json", ".cache/train-runs"):
        path = ws.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _epochs(results: Path) -> list[int]:
    with results.open(newline="") as fh:
        return [int(float(row["epoch"])) for row in csv.DictReader(fh, skipinitialspace=True)]


def test_two_nodes_of_two_processes_train_as_one_and_only_the_head_writes(head: Workspace, tmp_path: Path):
    _fresh(head)
    _with_nodes(head)
    node = _second_node(head, tmp_path / "node1")
    port = _free_port()
    node1 = _job(node, 1, port)  # the other node may come first: it waits for the head's job
    time.sleep(1.0)
    head_out = _finish(_job(head, 0, port))
    node_out = _finish(node1, timeout_s=60)
    assert "Running stage 'train'" in head_out, head_out[-4000:]
    assert node1.returncode == 0, node_out[-4000:]
    assert "the head says finished" in node_out
    for rank in (0, 1):
        assert f"rank {rank} of 4 (node 0" in head_out, "the head's processes are global ranks 0 and 1"
    for rank in (2, 3):
        assert f"rank {rank} of 4 (node 1" in node_out

    # Each process works through its quarter of the images, in batches of its share of the global batch.
    for out in (head_out, node_out):
        batches = re.findall(r"rank \d of 4: batches per epoch \[([\d, ]+)\]", out)
        assert len(batches) == 2, out[-3000:]
        assert {b.replace(" ", "") for b in batches} == {"2,2"}

    metrics = head.json("metrics/train.json")
    assert metrics["distributed"] == {"world_size": 4, "nnodes": 2, "nproc_per_node": 2}
    assert metrics["recipe"]["global_batch"] == BATCH and metrics["recipe"]["per_rank_batch"] == BATCH // 4
    assert metrics["epochs_run"] == 2 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    # The final validation covered the whole val split once, not rank 0's quarter of it.
    assert metrics["final_val_images"] == VAL_IMAGES
    assert head.json("reports/train.json")["backend"] == "gloo"
    assert (head.root / "models" / "best.pt").is_file()
    # Where the job ran is nowhere in what DVC records.
    assert str(port) not in (head.root / "dvc.lock").read_text()
    # Nothing of the training landed in the other node's workspace.
    for rel in ("models", "metrics", "plots", "reports/train.json"):
        assert not (node.root / rel).exists(), rel
    runs = node.root / ".cache" / "train-runs"
    assert not runs.exists() or not any(runs.rglob("*")), sorted(runs.rglob("*"))


def test_when_train_is_cached_the_other_node_exits_0_within_seconds(head: Workspace, tmp_path: Path):
    _with_nodes(head)
    assert (head.root / "models" / "best.pt").is_file(), "needs the trained run of the test before"
    node = _second_node(head, tmp_path / "node1")
    port = _free_port()
    node1 = _job(node, 1, port)
    head_job = _job(head, 0, port)
    head_out = _finish(head_job, timeout_s=120)
    decided = time.monotonic()
    node_out = _finish(node1, timeout_s=60)
    assert head_job.returncode == 0 and "Running stage 'train'" not in head_out, head_out[-3000:]
    assert node1.returncode == 0, node_out[-3000:]
    assert "the head says nothing-to-train" in node_out
    assert time.monotonic() - decided < 30


def test_an_upstream_failure_reaches_the_other_node_with_the_heads_reason(head: Workspace, tmp_path: Path):
    _with_nodes(head)
    label = sorted((head.root / "data" / "dataset").rglob("*.txt"))[0]
    before = label.read_bytes()
    node = _second_node(head, tmp_path / "node1")
    port = _free_port()
    node1 = _job(node, 1, port)
    try:
        label.write_text("not a label line\n")
        head_job = _job(head, 0, port)
        head_out = _finish(head_job, timeout_s=300)
        decided = time.monotonic()
        node_out = _finish(node1, timeout_s=60)
    finally:
        label.write_bytes(before)
    assert head_job.returncode != 0 and "Running stage 'train'" not in head_out, head_out[-3000:]
    assert node1.returncode != 0
    assert time.monotonic() - decided < 30
    failed = re.search(r"failed to reproduce '(\w+)'", head_out)
    assert failed, head_out[-3000:]
    assert "error: the head's command exited" in node_out and failed.group(0) in node_out, node_out[-3000:]


def test_a_node_with_other_code_or_packages_is_refused_before_training(head: Workspace, tmp_path: Path):
    _with_nodes(head)
    head.edit("train", seed=7)  # params no run has trained: DVC must run the stage, not restore it
    node = _second_node(head, tmp_path / "node1", lr0=0.02)
    with (node.root / "stages" / "training" / "recipe.py").open("a") as fh:
        fh.write("# a local change on one node\n")
    # Another Ultralytics on that node: its metadata comes first on the node's path.
    fake = tmp_path / "fake-site"
    (fake / "ultralytics-9.9.9.dist-info").mkdir(parents=True)
    (fake / "ultralytics-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ultralytics\n"
                                                                     "Version: 9.9.9\n")  # fmt: skip
    port = _free_port()
    node1 = _job(node, 1, port, {"PYTHONPATH": f"{fake}{os.pathsep}{node.env['PYTHONPATH']}"})
    started = time.monotonic()
    try:
        head_out = _finish(_job(head, 0, port), timeout_s=300)
        node_out = _finish(node1, timeout_s=60)
    finally:
        head.edit("train", seed=0)
    assert "Running stage 'train'" in head_out, head_out[-3000:]
    for out in (head_out, node_out):
        assert "node 1" in out and "does not match the head" in out, out[-3000:]
        assert "pipeline code (stages/, flows/)" in out
        assert "ultralytics 9.9.9 vs" in out
        assert "train.lr0: 0.02 vs 0.01 on the head" in out
    assert node1.returncode != 0 and "failed to reproduce 'train'" in head_out
    # Refused by the node's job, not found out when the rendezvous timed out (join_timeout_s: 60).
    assert "nodes joined within" not in head_out and "rank 0 of 4" not in head_out
    assert time.monotonic() - started < 60


def test_a_node_that_never_comes_fails_the_head_within_the_join_timeout(head: Workspace):
    _with_nodes(head, join_timeout_s=5)
    _fresh(head)
    started = time.monotonic()
    port = _free_port()
    out = _finish(_job(head, 0, port), timeout_s=300)
    took = time.monotonic() - started
    assert "1 of 2 nodes joined within train.distributed.join_timeout_s=5" in out, out[-3000:]
    assert f"127.0.0.1:{port}" in out and "failed to reproduce 'train'" in out
    assert took < 5 + 90, f"took {took:.0f} s"


def _workers(ws: Workspace) -> list[int]:
    """The launched training processes of ``ws`` (not the launcher, whose arguments name the worker too)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"stages.training.worker" in args and b"torch.distributed.run" not in args and str(ws.root).encode() in args:
            found.append(int(proc.name))
    return found


def test_a_worker_killed_mid_run_restarts_and_resumes_each_epoch_once(head: Workspace, tmp_path: Path):
    _fresh(head)
    _with_nodes(head, nnodes=1, nproc=2, max_restarts=1)
    head.edit("train", epochs=3)
    log = tmp_path / "repro.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "train"],
            cwd=head.root,
            env=head.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        head.wait_for_epochs(proc, 1)
        victims = _workers(head)
        assert len(victims) == 2, victims
        os.kill(max(victims), signal.SIGKILL)  # one worker, as an OOM kill would
        proc.wait(timeout=600)
    finally:
        head.edit("train", epochs=2)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    metrics = head.json("metrics/train.json")
    assert metrics["resumed_after_epoch"] >= 1 and metrics["starts"] == 2, out[-3000:]
    assert _epochs(head.root / "models" / "train" / "results.csv") == [1, 2, 3]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]


def test_a_cut_short_checkpoint_trains_on_from_the_previous_one(head: Workspace):
    _fresh(head)
    _with_nodes(head, nnodes=1, nproc=1)
    head.edit("train", epochs=4)
    try:
        proc = head.start_training()
        try:
            results = head.wait_for_epochs(proc, 2)
            while not (results.parent / "weights" / "last.prev.pt").is_file():
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        last = results.parent / "weights" / "last.pt"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # as a kill or full disk mid-save leaves it
        again, _ = head.repro("train")
    finally:
        head.edit("train", epochs=2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    metrics = head.json("metrics/train.json")
    assert metrics["resumed_after_epoch"] >= 1
    assert _epochs(head.root / "models" / "train" / "results.csv") == [1, 2, 3, 4]


def _kill_a_worker_after_the_first_epoch(head: Workspace, node: Workspace, head_job: subprocess.Popen[str]) -> None:
    """Once the head's run has logged an epoch, SIGKILL one training process of ``node`` (an OOM kill)."""
    runs = head.root / ".cache" / "train-runs"
    deadline = time.monotonic() + 300
    while not any(len(r.read_text().splitlines()) > 1 for r in runs.glob("*/results.csv")):
        assert time.monotonic() < deadline and head_job.poll() is None, "no epoch logged"
        time.sleep(0.1)
    victims = _workers(node)
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)


def test_a_retry_of_the_stage_resumes_on_every_node(head: Workspace, tmp_path: Path):
    """A worker of the other node dies; the head's stage fails, and its retry (as a flow retries) is
    joined by the other node again, which had waited for it: training resumes there too."""
    _fresh(head)
    _with_nodes(head)
    head.edit("train", epochs=3)
    try:
        node = _second_node(head, tmp_path / "node1")
        port = _free_port()
        twice = ("--", "bash", "-c", f"{sys.executable} -m dvc repro train; {sys.executable} -m dvc repro train")
        node1 = _job(node, 1, port)
        head_job = _job(head, 0, port, command=twice)
        _kill_a_worker_after_the_first_epoch(head, node, head_job)
        head_out = _finish(head_job)
        node_out = _finish(node1, timeout_s=60)
    finally:
        head.edit("train", epochs=2)
    assert head_out.count("Running stage 'train'") == 2, head_out[-4000:]
    assert head_job.returncode == 0 and node1.returncode == 0, node_out[-3000:]
    assert "attempt 1 ended on this node" in node_out and "attempt2" in node_out
    assert "rank 2 of 4 (node 1" in node_out.split("attempt 1 ended on this node")[1], "node 1 trained the retry"
    metrics = head.json("metrics/train.json")
    assert metrics["resumed_after_epoch"] >= 1
    assert _epochs(head.root / "models" / "train" / "results.csv") == [1, 2, 3]


def test_a_worker_killed_on_another_node_restarts_every_node_in_the_same_attempt(head: Workspace, tmp_path: Path):
    """``max_restarts: 1`` over two nodes: every launcher starts a new round (their own restart counts
    differ: only the failed node's launcher counts it), the processes meet under the round's keys, and
    global rank 0 resumes, each epoch trained once."""
    _fresh(head)
    _with_nodes(head, max_restarts=1)
    head.edit("train", epochs=3)
    try:
        node = _second_node(head, tmp_path / "node1")
        port = _free_port()
        node1 = _job(node, 1, port)
        head_job = _job(head, 0, port)
        _kill_a_worker_after_the_first_epoch(head, node, head_job)
        head_out = _finish(head_job)
        node_out = _finish(node1, timeout_s=60)
    finally:
        head.edit("train", epochs=2)
    assert head_job.returncode == 0 and node1.returncode == 0, head_out[-4000:] + node_out[-3000:]
    assert head_out.count("Running stage 'train'") == 1 and "attempt2" not in node_out
    metrics = head.json("metrics/train.json")
    assert metrics["starts"] == 2 and metrics["resumed_after_epoch"] >= 1
    assert _epochs(head.root / "models" / "train" / "results.csv") == [1, 2, 3]
