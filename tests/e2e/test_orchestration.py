"""End to end: promotion, the data-change check, one run per workspace, and resuming a killed training."""

from __future__ import annotations

import json
import os
import signal

import pytest
from PIL import Image

from stages.core.lock import workspace_lock
from tests.conftest import tree_digest
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.with_sample_data(tmp_path_factory, "ws-orch", repro=True)


def test_promotion_then_data_check_then_regression_refused(ws: Workspace):
    check = ws.run("-m", "stages.core.data_version")
    assert check.returncode == 0 and json.loads(check.stdout)["production"] is None

    proc = ws.run("-m", "stages.promote")
    assert proc.returncode == 0, proc.stderr
    meta = ws.json("models/production/metadata.json")
    assert meta["version"] == 1
    assert {"model.pt", "model.onnx", "model_card.md", "evaluate.json", "benchmark.json"} <= set(meta["files"])
    assert meta["data_version"] == json.loads(check.stdout)["current"]["md5"]
    assert ws.json("reports/promotion.json")["promoted"] is True

    unchanged = ws.run("-m", "stages.core.data_version")
    assert unchanged.returncode == 10, unchanged.stdout + unchanged.stderr
    assert "unchanged" in unchanged.stderr

    # Production claims a better model than the candidate: promotion must refuse and touch nothing.
    meta["metrics"]["map50_95"] = 0.99
    (ws.root / "models/production/metadata.json").write_text(json.dumps(meta))
    # Recorded as production by DVC too; otherwise promotion refuses a folder that differs from its .dvc file.
    assert ws.run("-m", "dvc", "add", "-q", "models/production").returncode == 0
    # And as the promoted version 1 in git (the tag); otherwise promotion refuses an older pointer.
    assert ws.json("reports/promotion.json")["tag"] == "production-v1"
    ws.git("commit", "-q", "-m", "production v1 claims more", "--", "models/production.dvc")
    ws.git("tag", "-f", "production-v1")
    before = tree_digest(ws.root / "models" / "production")
    refused = ws.run("-m", "stages.promote")
    assert refused.returncode == 2
    assert "not promoted: no regression" in refused.stderr and "0.99" in refused.stderr
    assert tree_digest(ws.root / "models" / "production") == before
    assert ws.json("reports/promotion.json")["promoted"] is False


def test_promotion_refuses_results_older_than_the_params(ws: Workspace):
    with ws.edited("benchmark", iterations=9):
        refused = ws.run("-m", "stages.promote")
    assert refused.returncode == 2
    assert "pipeline up to date out of date: benchmark, report" in refused.stderr


def test_flow_skips_unchanged_data_and_runs_when_it_changes(ws: Workspace):
    proc = ws.run("-m", "flows.pipeline", "--workspace", str(ws.root), "--only-if-data-changed", "--no-promote")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped: dataset unchanged" in proc.stdout

    # A new image (a background image: mirrored, so it duplicates nothing) changes the data version.
    source = ws.root / "data/dataset/images/train/train_00000.jpg"
    new_image = source.parent / "new_image.jpg"
    Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new_image, quality=95)
    try:
        changed = ws.run("-m", "stages.core.data_version")
        assert changed.returncode == 0 and "dataset changed" in changed.stderr

        proc = ws.run("-m", "flows.pipeline", "--workspace", str(ws.root), "--only-if-data-changed", "--no-promote")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "skipped" not in proc.stdout
        ran = proc.stdout.split("ran: ", 1)[1].splitlines()[0].split(", ")
        assert {"prepare", "validate", "train", "evaluate"} <= set(ran), proc.stdout
        # The stages saw the new data: validate reports the new image (a background image, no label).
        problems = ws.json("reports/validate.json")["problems"]
        about_it = [p["code"] for p in problems if p["file"] == "data/dataset/images/train/new_image.jpg"]
        assert about_it == ["image_without_label"]
    finally:
        new_image.unlink()


def test_second_run_on_a_busy_workspace_is_refused(ws: Workspace):
    with workspace_lock(ws.root, 0, "test holder"):
        proc, ran = ws.repro("report", "--force", "--single-item")
        assert proc.returncode != 0
        assert "test holder" in proc.stderr + proc.stdout and "is using this workspace" in proc.stderr + proc.stdout

        with ws.edited("orchestration", lock_timeout_s=1):
            flow = ws.run("-m", "flows.pipeline", "--workspace", str(ws.root))
        assert flow.returncode == 1
        assert "workspace is busy" in flow.stderr and "test holder" in flow.stderr
    proc, ran = ws.repro("report", "--force", "--single-item")
    assert proc.returncode == 0 and ran == {"report"}


def test_killed_training_resumes_and_trains_exactly_the_configured_epochs(ws: Workspace):
    ws.edit("train", epochs=6)
    proc = ws.start_training()
    results = ws.wait_for_epochs(proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # as an OOM kill or a lost node would
    proc.wait()
    done_before = len(results.read_text().splitlines()) - 1
    assert 2 <= done_before < 6

    again, ran = ws.repro("train")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train" in ran
    train = ws.json("metrics/train.json")
    # The checkpoint can lag the CSV by one epoch when the kill lands between the two writes.
    assert 1 <= train["resumed_after_epoch"] <= done_before
    assert train["epochs_run"] == 6
    published = ws.root / "models/train/results.csv"
    epochs = [int(line.split(",")[0]) for line in published.read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert not results.parent.exists(), "a finished run's checkpoint folder is removed"


def test_no_process_tried_to_reach_the_network(ws: Workspace):
    assert ws.network_attempts() == []
