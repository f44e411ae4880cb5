"""End to end: two "nodes" on this machine train through the real launcher (torchrun, c10d, gloo).

Each node is its own copy of the workspace, as on two machines: the head runs ``dvc repro train``,
the other node runs the command ``python -m stages.train --print-launch`` prints for it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
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
BATCH = 8  # global: 4 per process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.with_sample_data(tmp_path_factory, "ws-head", train=TRAIN_IMAGES, val=8)
    proc, _ = ws.repro("validate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws.edit("train", epochs=2, batch=BATCH, workers=0, warmup_epochs=0.0)
    return ws


def _with_nodes(ws: Workspace, **dist: object) -> None:
    params = ws.params()
    params["train"]["distributed"].update(
        {"nnodes": 2, "nproc_per_node": 1, "rdzv_endpoint": f"127.0.0.1:{_free_port()}", "timeout_s": 60, **dist}
    )
    ws.set_params(params)


def _second_node(ws: Workspace, tmp_path: Path, **train: object) -> Workspace:
    """A copy of the head's workspace as another machine would hold it, with ``train`` params changed."""
    root = tmp_path / "node1"
    shutil.copytree(ws.root, root, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    node = Workspace(root, tmp_path / "prefect-node1")
    if train:
        node.edit("train", **train)
    return node


def _start(ws: Workspace, cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        cwd=ws.root,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _start_node1(node: Workspace) -> subprocess.Popen[str]:
    printed = node.run("-m", "stages.train", "--print-launch")
    assert printed.returncode == 0, printed.stderr
    lines = dict(line.split(": ", 1) for line in printed.stdout.splitlines())
    assert set(lines) == {"node 0", "node 1"}, printed.stdout
    assert "dvc" not in lines["node 1"] and "torch.distributed.run" in lines["node 1"]
    cmd = shlex.split(lines["node 1"])
    assert cmd[0] == "python"
    return _start(node, [sys.executable, *cmd[1:]])


def _start_head(ws: Workspace) -> subprocess.Popen[str]:
    return _start(ws, [sys.executable, "-m", "dvc", "repro", "train"])


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


def test_two_nodes_train_as_one_and_only_the_head_writes(head: Workspace, tmp_path: Path):
    _fresh(head)
    _with_nodes(head)
    node = _second_node(head, tmp_path)
    node1 = _start_node1(node)
    time.sleep(1.0)  # the head's node may come second: rank order must not depend on who joins first
    head_out = _finish(_start_head(head))
    node_out = _finish(node1)
    assert "Running stage 'train'" in head_out
    assert node1.returncode == 0, node_out[-4000:]
    assert "rank 0 of 2" in head_out and "rank 1 of 2" in node_out, "the head's process must be global rank 0"

    # Each process works through its half of the images, in batches of its share of the global batch.
    per_rank = math.ceil(math.ceil(TRAIN_IMAGES / 2) / (BATCH // 2))
    for out in (head_out, node_out):
        batches = re.findall(r"rank \d of 2: batches per epoch \[([\d, ]+)\]", out)
        assert batches, out[-3000:]
        assert [int(b) for b in batches[0].split(",")] == [per_rank, per_rank]

    metrics = head.json("metrics/train.json")
    assert metrics["distributed"] == {"world_size": 2, "nnodes": 2, "nproc_per_node": 1}
    assert metrics["recipe"]["global_batch"] == BATCH and metrics["recipe"]["per_rank_batch"] == BATCH // 2
    assert metrics["epochs_run"] == 2 and len(metrics["epochs"]) == 2
    assert all(e["images_per_s"] > 0 and 0 <= e["dataloader_wait_share"] < 1 for e in metrics["epochs"])
    assert head.json("reports/train.json")["backend"] == "gloo"
    assert (head.root / "models" / "best.pt").is_file()
    # Nothing of the training landed in the other node's workspace.
    for rel in ("models", "metrics", "plots", "reports/train.json"):
        assert not (node.root / rel).exists(), rel
    runs = node.root / ".cache" / "train-runs"
    assert not runs.exists() or not any(runs.rglob("*")), sorted(runs.rglob("*"))


def test_a_node_with_other_params_is_refused(head: Workspace, tmp_path: Path):
    _with_nodes(head)
    node = _second_node(head, tmp_path, lr0=0.02)
    node1 = _start_node1(node)
    head_out = _finish(_start_head(head))
    node_out = _finish(node1)
    for out in (head_out, node_out):
        assert "does not match the head" in out and "train.lr0: 0.02 vs 0.01 on the head" in out, out[-3000:]
    assert node1.returncode != 0
    assert "failed to reproduce 'train'" in head_out


def test_a_node_that_never_joins_fails_the_head_within_the_timeout(head: Workspace):
    _with_nodes(head, timeout_s=5)
    started = time.monotonic()
    out = _finish(_start_head(head), timeout_s=300)
    took = time.monotonic() - started
    endpoint = head.params()["train"]["distributed"]["rdzv_endpoint"]
    assert f"the rendezvous at {endpoint}" in out and "1 of 2 nodes joined" in out, out[-3000:]
    assert "failed to reproduce 'train'" in out
    assert took < 5 + 60, f"took {took:.0f} s"


def test_killed_nodes_resume_to_exactly_the_configured_epochs(head: Workspace, tmp_path: Path):
    _fresh(head)
    _with_nodes(head)
    head.edit("train", epochs=3)
    node = _second_node(head, tmp_path / "first")
    procs = [_start_node1(node), _start_head(head)]
    try:
        head.wait_for_epochs(procs[1], 1)
    finally:
        for proc in procs:  # as a lost machine would: no clean-up
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    node = _second_node(head, tmp_path / "again")
    node1 = _start_node1(node)
    head_out = _finish(_start_head(head))
    node_out = _finish(node1)
    assert node1.returncode == 0, node_out[-3000:]
    metrics = head.json("metrics/train.json")
    assert metrics["resumed_after_epoch"] >= 1, head_out[-3000:]
    assert metrics["epochs_run"] == 3
