"""End to end: results a user cannot lose, tested the way they broke (issue 8).

One git + DVC workspace with a promoted model is shared by the tests of this module, in order:
experiments (`dvc exp run`, `exp apply`), `dvc checkout` and `git checkout` never touch
`models/production/`; promotion refuses a missing or changed production folder and is idempotent;
a param changed and changed back restores the model from the run-cache without training; a training
stopped after its first epoch leaves the previous outputs as they were and then resumes; and an
experiment whose gate fails records its own metrics and exports nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import tree_digest
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

PRODUCTION = "models/production"
TRAIN_OUTPUTS = ("models/best.pt", "models/train", "metrics/train.json", "plots/train_curves.csv")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A committed workspace whose model is production version 1 (models/production.dvc in git)."""
    w = Workspace.with_sample_data(tmp_path_factory, "ws-safe", train=8, val=4, repro=True)
    promoted = w.run("-m", "stages.promote")
    assert promoted.returncode == 0, promoted.stderr
    w.git("checkout", "-q", "-b", "main")
    w.git("add", "-A")
    w.git("commit", "-q", "-m", "pipeline, data and production v1")
    w.production = tree_digest(w.root / PRODUCTION)  # type: ignore[attr-defined]
    assert "metadata.json" in w.production  # type: ignore[attr-defined]
    return w


def production_intact(ws: Workspace) -> bool:
    return tree_digest(ws.root / PRODUCTION) == ws.production  # type: ignore[attr-defined]


def outputs_digest(ws: Workspace, paths: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Digest of each output (a file or a folder), keyed by its path."""
    digests = {}
    for rel in paths:
        path = ws.root / rel
        digests[rel] = tree_digest(path) if path.is_dir() else tree_digest(path.parent).get(path.name, "missing")
    return digests


def dvc(ws: Workspace, *args: str) -> str:
    proc = ws.run("-m", "dvc", *args)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_experiments_and_checkouts_leave_production_alone(ws: Workspace):
    dvc(ws, "exp", "run", "-n", "exp-lr", "-S", "train.lr0=0.02")
    assert production_intact(ws), "dvc exp run changed models/production"

    dvc(ws, "exp", "apply", "exp-lr")
    assert production_intact(ws), "dvc exp apply changed models/production"
    assert ws.params()["train"]["lr0"] == 0.02

    # The applied experiment on a branch of its own, then back to main and its outputs.
    ws.git("checkout", "-q", "-b", "lr-experiment")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "experiment lr0=0.02")
    ws.git("checkout", "-q", "main")
    dvc(ws, "checkout", "--force")
    assert production_intact(ws), "git checkout + dvc checkout changed models/production"
    assert ws.params()["train"]["lr0"] == 0.01
    status = json.loads(ws.run("-m", "dvc", "status", "--json").stdout)
    assert set(status) <= {"environment"}, f"main's outputs were not all restored: {status}"

    ws.git("checkout", "-q", "lr-experiment")
    dvc(ws, "checkout")
    assert production_intact(ws)
    ws.git("checkout", "-q", "main")
    dvc(ws, "checkout", "--force")
    assert production_intact(ws)


def test_promotion_refuses_a_missing_or_changed_production_folder(ws: Workspace):
    production = ws.root / PRODUCTION
    aside = ws.root.parent / "production-aside"
    shutil.move(production, aside)
    try:
        refused = ws.run("-m", "stages.promote")
        assert refused.returncode == 2, refused.stderr
        assert "dvc checkout models/production.dvc" in refused.stderr and "dvc pull" in refused.stderr
        assert not production.exists(), "a refused promotion must not create production"
    finally:
        shutil.move(aside, production)

    card = production / "model_card.md"
    original = card.read_bytes()
    card.write_bytes(original + b"\nedited by hand\n")
    try:
        refused = ws.run("-m", "stages.promote")
        assert refused.returncode == 2, refused.stderr
        assert "differs from what models/production.dvc records" in refused.stderr
    finally:
        card.write_bytes(original)

    # The documented fix brings a deleted production back.
    shutil.rmtree(production)
    dvc(ws, "checkout", "models/production.dvc")
    assert production_intact(ws)


def test_promoting_the_production_model_again_changes_nothing(ws: Workspace):
    dvc_file = (ws.root / "models/production.dvc").read_bytes()
    again = ws.run("-m", "stages.promote")
    assert again.returncode == 0, again.stderr
    assert "already production version 1" in again.stderr
    report = ws.json("reports/promotion.json")
    assert report["promoted"] is False and report["unchanged"] is True and report["version"] == 1
    assert production_intact(ws)
    assert (ws.root / "models/production.dvc").read_bytes() == dvc_file


def test_param_changed_and_changed_back_does_not_retrain(ws: Workspace):
    before = outputs_digest(ws, TRAIN_OUTPUTS)
    with ws.edited("train", seed=7):
        proc, ran = ws.repro("train")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "train" in ran
    proc, ran = ws.repro("train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" not in ran, "the run-cache should have restored the earlier training"
    assert "Stage 'train' is cached" in proc.stdout + proc.stderr
    assert outputs_digest(ws, TRAIN_OUTPUTS) == before


def test_stopped_training_keeps_the_last_good_outputs_and_then_resumes(ws: Workspace):
    before = outputs_digest(ws, TRAIN_OUTPUTS)
    ws.edit("train", epochs=3)
    proc = ws.start_training()
    results = ws.wait_for_epochs(proc, 1)
    # Stop the training process itself, as a scheduler's timeout would (DVC then reports the failure).
    os.kill(_stage_process(proc.pid, "stages.train"), signal.SIGTERM)
    assert proc.wait(timeout=300) != 0, "dvc repro should fail when training fails"

    assert outputs_digest(ws, TRAIN_OUTPUTS) == before, "a failed training must leave the last good outputs"
    checkpoint = results.parent / "weights" / "last.pt"
    assert checkpoint.is_file(), "the unfinished run's checkpoint is kept for a resume"

    again, ran = ws.repro("train")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train" in ran
    train = ws.json("metrics/train.json")
    assert train["resumed_after_epoch"] >= 1 and train["epochs_run"] == 3
    epochs = [line.split(",")[0] for line in (ws.root / "models/train/results.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]
    assert not results.parent.exists()
    assert production_intact(ws)


def test_experiment_with_a_failing_gate_records_its_own_metrics(ws: Workspace):
    dvc(ws, "exp", "run", "-n", "exp-strict", "-S", "evaluate.min_map50=0.99")
    assert production_intact(ws), "an experiment with a failed gate changed models/production"
    assert (ws.root / "models/deploy").is_dir() and not (ws.root / "models/deploy/model.onnx").exists()

    shown = json.loads(ws.run("-m", "dvc", "exp", "show", "--json").stdout)
    strict = _experiment(shown, "exp-strict")
    baseline = next(entry for entry in shown if entry.get("name") == "main")["data"]["metrics"]
    assert strict["metrics/quality.json"]["data"]["gate"] == 0
    assert strict["metrics/deployment.json"]["data"] == {"deployable": 0}
    assert baseline["metrics/quality.json"]["data"]["gate"] == 1
    assert baseline["metrics/deployment.json"]["data"]["deployable"] >= 1
    assert ws.json("metrics/export.json") == {"exported": 0}  # the workspace holds the experiment's outputs

    refused = ws.run("-m", "stages.promote")
    assert refused.returncode == 2 and "map50" in refused.stderr
    assert production_intact(ws)


def _experiment(shown: list[dict], name: str) -> dict:
    """The metrics of the experiment called ``name`` in ``dvc exp show --json`` output."""
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                if revision.get("name") == name:
                    return revision["data"]["metrics"]
    raise AssertionError(f"experiment {name} not in dvc exp show: {json.dumps(shown)[:2000]}")


def _stage_process(session: int, module: str) -> int:
    """The pid of the process running ``python -m <module>`` in the process session ``session``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        if module.encode() in cmdline and int(stat.rsplit(")", 1)[1].split()[3]) == session:
            return int(entry.name)
    raise AssertionError(f"no process runs {module} in session {session}")
