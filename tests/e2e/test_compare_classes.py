"""``make compare`` on an 80-class workspace (issue 25, "Experiments at 80 classes").

A git + DVC repository with the pipeline's layout in small: ``train`` writes a model from
``train.lr0``, ``evaluate`` writes ``metrics/quality.json`` through the project's own
:func:`stages.reporting.summary.quality` (80 classes, ``bus/coach`` and ``traffic light`` among them;
mAP the same whatever the lr, so the experiments tie on it), and ``benchmark`` writes
``metrics/deployment.json`` from the model. Real ``dvc exp run``: one full experiment, and one trial
stopped at ``evaluate`` as the tuning flow runs them. Seconds, not a training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, venv_env
from tests.e2e.workspace import GIT_ENV

pytestmark = pytest.mark.e2e

SCREEN = 160
# 80 names as long as COCO's, two of which need a safe key name.
NAMES = ["bus/coach", "traffic light", *(f"object-{i:02d}" for i in range(78))]

TRAIN = """
import yaml
lr0 = yaml.safe_load(open("params.yaml"))["train"]["lr0"]
open("model.txt", "w").write(str(lr0))
"""
EVALUATE = """
import json, os, yaml
from stages.reporting.summary import quality
lr0 = float(open("model.txt").read())
names = yaml.safe_load(open("names.yaml"))
per_class = {n: {"ap50_95": round(0.2 + lr0 * (i + 1) / 100, 6)} for i, n in enumerate(names)}
evaluate = {"gates": {"passed": 1}, "map50": 0.5, "map50_95": 0.3, "per_class": per_class}
os.makedirs("metrics", exist_ok=True)
json.dump(quality(evaluate), open("metrics/quality.json", "w"))
"""
BENCHMARK = """
import json, os
from stages.reporting.summary import deployment
lr0 = float(open("model.txt").read())
deploy = {"onnx-fp32": {"deployable": 1, "size_mb": 10.5}, "onnx-int8": {"deployable": 1, "size_mb": 3.2}}
latency = {"onnx-fp32": round(4 + lr0 * 100, 3), "onnx-int8": round(3 + lr0 * 100, 3)}
os.makedirs("metrics", exist_ok=True)
json.dump(deployment(deploy, latency), open("metrics/deployment.json", "w"))
"""
DVC_YAML = {
    "stages": {
        "train": {"cmd": "python train.py", "deps": ["train.py"], "params": ["train.lr0"], "outs": ["model.txt"]},
        "evaluate": {
            "cmd": "python evaluate.py",
            "deps": ["evaluate.py", "model.txt", "names.yaml"],
            "metrics": ["metrics/quality.json"],
        },
        "benchmark": {
            "cmd": "python benchmark.py",
            "deps": ["benchmark.py", "model.txt"],
            "metrics": ["metrics/deployment.json"],
        },
    }
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The baseline committed, a full experiment ``full`` and a trial ``trial`` stopped at ``evaluate``."""
    root = tmp_path_factory.mktemp("compare80")
    env = {**venv_env(), **GIT_ENV, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO)}
    for name, text in {"train.py": TRAIN, "evaluate.py": EVALUATE, "benchmark.py": BENCHMARK}.items():
        (root / name).write_text(text)
    (root / "names.yaml").write_text(yaml.safe_dump(NAMES))
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"lr0": 0.01, "epochs": 3}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))

    def sh(*args: str) -> str:
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        return proc.stdout

    sh("git", "init", "-q", "-b", "main")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "baseline")

    def back_to_baseline() -> None:
        # A run without --queue leaves its results (dvc.lock included) in the workspace.
        sh("git", "checkout", "-q", "--", ".")
        sh(sys.executable, "-m", "dvc", "checkout", "-q", "-f")

    sh(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "full", "-S", "train.lr0=0.02")
    back_to_baseline()
    # As a tuning trial: up to evaluate only; benchmark's dvc.lock entry stays the baseline's.
    sh(sys.executable, "-m", "dvc", "exp", "run", "-q", "evaluate", "-n", "trial", "-S", "train.lr0=0.03")
    back_to_baseline()
    return root, env


def compare(ws: tuple[Path, dict[str, str]], *args: str) -> tuple[list[str], dict[str, list[str]]]:
    """What `make compare` prints: its lines, and each row's cells by column name."""
    root, env = ws
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare.py"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    rows = {cells[0]: cells for cells in (line.split() for line in lines[2:-1])}
    return lines, {name: dict(zip(header, cells, strict=True)) for name, cells in rows.items()}


def test_compare_at_80_classes_fits_a_screen_and_shows_the_headline(ws: tuple[Path, dict[str, str]]):
    lines, rows = compare(ws)
    widest = max(len(line) for line in lines)
    assert widest <= SCREEN, f"make compare is {widest} columns wide:\n" + "\n".join(lines)
    assert set(rows) == {"workspace", "main", "full", "trial"}, lines
    # Every row ties on gate and mAP: shown all the same.
    assert all(row["map50_95"] == "0.3" and row["map50"] == "0.5" and row["gate"] == "1" for row in rows.values())
    assert rows["full"]["train.lr0"] == "0.02" and rows["trial"]["train.lr0"] == "0.03"
    assert "train.epochs" not in rows["main"], "a param no experiment changed is not a column"
    assert not any(key.startswith("ap.") for key in rows["main"]), "per-class columns are opt-in"


def test_a_trial_stopped_at_evaluate_shows_no_latency_of_its_own(ws: tuple[Path, dict[str, str]]):
    root, env = ws
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True
    )
    commit = next(c for c in json.loads(shown.stdout) if c.get("experiments"))
    exps = {r["name"]: r["data"] for e in commit["experiments"] for r in e["revs"]}
    baseline = commit["data"]["metrics"]["metrics/deployment.json"]["data"]
    # What DVC itself shows for the trial: the baseline's latency, as if measured on the trial's model.
    assert exps["trial"]["metrics"]["metrics/deployment.json"]["data"] == baseline
    _, rows = compare(ws)
    assert rows["trial"]["ms.onnx-fp32"] == "-" and rows["trial"]["mb.onnx-fp32"] == "-"
    assert rows["trial"]["deployable"] == "-"
    assert rows["full"]["ms.onnx-fp32"] == "6" and rows["main"]["ms.onnx-fp32"] == "5"


def test_per_class_columns_on_request_keep_every_class_name(ws: tuple[Path, dict[str, str]]):
    _, rows = compare(ws, "--per-class")
    assert rows["main"]["ap.bus_coach"] == "0.2001" and rows["full"]["ap.bus_coach"] == "0.2002"
    assert "ap.traffic_light" in rows["main"]
    assert sum(key.startswith("ap.") for key in rows["main"]) == len(NAMES)
