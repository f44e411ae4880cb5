"""End to end: hyper-parameter search as DVC experiments (``python -m flows.tune``).

One committed tiny workspace, shared by the tests of this module in order: a 2-trial study run as
the Prefect flow (two experiments in ``dvc exp show`` with the report's values and metrics; both
score 0, a tie, so the report names no best), the
same study continued to 3 trials (only the third runs) and then asked for 3 again (nothing runs), a
study whose trial fails in ``dvc exp run`` (recorded failed with the stage's error line), and one
whose trial misses the quality gate (pruned, its metric kept, never the best). Each value in the
report is checked against the experiment's own ``metrics/evaluate.json``, found through the
``dvc.lock`` of its commit in DVC's cache (whatever ``dvc.yaml`` declares as metrics). The search space is
``evaluate.iou``, so only the first trial trains and the others evaluate the same model; the
broken study changes ``train.model``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

SPACE = {"evaluate.iou": {"type": "float", "low": 0.5, "high": 0.8}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A committed workspace (experiments need a baseline commit) whose study searches evaluate.iou."""
    w = Workspace.with_sample_data(tmp_path_factory, "ws-tune", train=8, val=4)
    # Prefect gives its temporary server 20 s to start, too little on 2 cores shared with other modules.
    w.env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    params = w.params()
    params["tune"].update(study="e2e", space=SPACE)
    w.set_params(params)
    w.git("checkout", "-q", "-b", "main")
    w.git("add", "-A")
    w.git("commit", "-q", "-m", "pipeline, data and a study")
    return w


def tune(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    proc = ws.run("-m", "flows.tune", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def experiments(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Every experiment in ``dvc exp show --json``, by name: its commit and its params.yaml."""
    proc = ws.run("-m", "dvc", "exp", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    found = {}
    for commit in json.loads(proc.stdout):
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                params = revision["data"]["params"]["params.yaml"]["data"]
                found[revision["name"]] = {"rev": revision["rev"], "params": params}
    return found


def recorded(ws: Workspace, rev: str, path: str = "metrics/evaluate.json") -> dict[str, Any]:
    """The file ``path`` as the experiment commit ``rev`` recorded it: its ``dvc.lock`` hash, read from
    DVC's cache (whatever dvc.yaml declares as metrics, and without touching the workspace)."""
    lock = yaml.safe_load(ws.git("show", f"{rev}:dvc.lock"))
    (md5,) = [o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == path]
    return json.loads((ws.root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text())


def test_two_trials_run_as_the_flow_are_two_experiments_in_the_report(ws: Workspace):
    committed = (ws.root / "params.yaml").read_text()
    proc = tune(ws, "--trials", "2", "--flow")
    # Every mAP of a 1-epoch model is 0: the two trials tie, so neither is called best (issue 25).
    assert "best: none: all 2 complete trials tied at metrics/evaluate.json:map50_95 = 0.0: no best" in proc.stdout
    assert "dvc exp apply" not in proc.stdout

    report = ws.json("reports/tune.json")
    assert report["study"] == "e2e" and report["metric"] == "metrics/evaluate.json:map50_95"
    assert [t["number"] for t in report["trials"]] == [0, 1]
    assert [t["state"] for t in report["trials"]] == ["complete", "complete"]
    assert [t["experiment"] for t in report["trials"]] == ["e2e-0", "e2e-1"]
    assert report["trials"][0]["ran"] == ["prepare", "validate", "train", "evaluate"]
    assert report["trials"][1]["ran"] == ["evaluate"], "only evaluate.iou changed: the same model is evaluated"
    assert [t["value"] for t in report["trials"]] == [0.0, 0.0]
    assert report["best"] is None and report["tied"] == 0.0

    shown = experiments(ws)
    assert {"e2e-0", "e2e-1"} <= set(shown)
    for trial in report["trials"]:
        exp = shown[trial["experiment"]]
        assert exp["params"]["evaluate"]["iou"] == pytest.approx(trial["params"]["evaluate.iou"], rel=1e-12)
        assert recorded(ws, exp["rev"])["map50_95"] == trial["value"]
    assert shown["e2e-0"]["params"]["evaluate"]["iou"] != shown["e2e-1"]["params"]["evaluate"]["iou"]
    assert (ws.root / ".cache/tune/e2e.db").is_file()
    assert (ws.root / "params.yaml").read_text() == committed, "params.yaml is put back after the study"


def test_more_trials_continue_the_same_study(ws: Workspace):
    before = ws.json("reports/tune.json")["trials"]
    proc = tune(ws, "--trials", "3")
    assert "trial 2 (e2e-2)" in proc.stderr
    assert "trial 0 (" not in proc.stderr and "trial 1 (" not in proc.stderr, "only the missing trial runs"
    report = ws.json("reports/tune.json")
    assert report["trials"][:2] == before
    assert [t["state"] for t in report["trials"]] == ["complete"] * 3
    assert report["trials"][2]["params"] != before[0]["params"] and report["trials"][2]["params"] != before[1]["params"]
    assert {"e2e-0", "e2e-1", "e2e-2"} <= set(experiments(ws))

    again = tune(ws, "--trials", "3")
    assert "already holds 3 trials" in again.stderr and "dvc exp run" not in again.stderr
    assert ws.json("reports/tune.json")["trials"] == report["trials"]


def test_a_trial_whose_exp_run_fails_is_recorded_failed(ws: Workspace):
    broken = {"train.model": {"type": "categorical", "choices": ["missing.pt"]}}
    with ws.edited("tune", study="e2e-broken", space=broken):
        proc = tune(ws, "--trials", "1")
        assert "best: none" in proc.stdout
        assert ws.params()["train"]["model"] == "yolo11n.yaml", "params.yaml is put back after a failed trial"
    report = ws.json("reports/tune.json")
    (trial,) = report["trials"]
    assert trial["state"] == "failed" and trial["value"] is None and report["best"] is None
    assert trial["params"] == {"train.model": "missing.pt"}
    assert trial["error"].startswith("error: [stage 'train'") and "'missing.pt' is not a local file" in trial["error"]
    assert report["counts"]["failed"] == 1


def test_a_trial_that_misses_the_gate_is_pruned_with_its_metric(ws: Workspace):
    # Judged by a nested key that differs per trial (every mAP of a 1-epoch model is 0): the gate's
    # threshold, which is the value the trial sets.
    strict = {"evaluate.min_map50": {"type": "float", "low": 0.99, "high": 1.0}}
    metric = {"file": "metrics/evaluate.json", "key": "gates.checks.map50.threshold"}
    with ws.edited("tune", study="e2e-gate", space=strict, metric=metric):
        tune(ws, "--trials", "1")
    report = ws.json("reports/tune.json")
    (trial,) = report["trials"]
    assert trial["state"] == "pruned" and trial["gate_passed"] is False and report["best"] is None
    assert 0.99 <= trial["value"] <= 1.0
    assert trial["value"] == pytest.approx(trial["params"]["evaluate.min_map50"], rel=1e-12)
    shown = experiments(ws)
    assert "e2e-broken-0" not in shown, "DVC saves no experiment for a failed run"
    evaluate = recorded(ws, shown["e2e-gate-0"]["rev"])
    assert evaluate["gates"]["passed"] == 0 and evaluate["gates"]["checks"]["map50"]["threshold"] == trial["value"]
    assert ws.network_attempts() == [], "the studies reached beyond this machine"
