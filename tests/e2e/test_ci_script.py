"""End to end: scripts/ci_retrain.sh in a git repo with a DVC remote, then in a fresh clone of it.

The clone pulls data, outputs and run-cache, and its `dvc repro` must not train again; a params
change there re-runs only what reads it; both runs write a metrics diff against main. The script's
switches: `ONLY_IF_DATA_CHANGED=1` goes on when there is no production model yet (the first run) and
ends early once production holds this data; `PROMOTE=1` promotes (the clone's run), commits and tags
the pointer and pushes both to the origin, and refuses to promote where it cannot push.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.workspace import GIT_ENV, Workspace

pytestmark = pytest.mark.e2e


def ci(ws: Workspace, summary: Path, **switches: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**ws.env, "CI_BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(summary), **switches}
    proc = subprocess.run(
        ["bash", "scripts/ci_retrain.sh"], cwd=ws.root, env=env, capture_output=True, text=True, timeout=900
    )
    return proc, set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


def test_ci_script_shares_results_through_the_remote(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("prefect-home")
    first = Workspace.create(tmp_path_factory.mktemp("ci-main"), home)
    shutil.copytree(REPO / "scripts", first.root / "scripts")
    remote = tmp_path_factory.mktemp("remote")
    gen = first.run(
        "-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "16", "--val", "8", "--size", "64"
    )
    assert gen.returncode == 0, gen.stderr
    assert first.run("-m", "dvc", "remote", "modify", "local", "url", str(remote)).returncode == 0
    first.add_data()
    first.git("checkout", "-q", "-b", "main")
    first.git("add", "-A")
    first.git("commit", "-q", "-m", "pipeline and data")

    summary = tmp_path_factory.mktemp("summary") / "main.md"
    proc, ran = ci(first, summary, ONLY_IF_DATA_CHANGED="1")  # no production model yet: it goes on
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train" in ran
    assert not (first.root / "models/production").exists(), "promoted without PROMOTE=1"
    assert (remote / "runs").is_dir(), "the run-cache was not pushed"
    text = summary.read_text()
    # The compared numbers (dvc.yaml declares only these two files as metrics).
    assert "## Metrics against main" in text and "metrics/quality.json" in text and "map50" in text
    assert "metrics/deployment.json" in text and "ms.onnx-fp32" in text
    first.git("add", "-A")
    first.git("commit", "-q", "-m", "retrained")  # dvc.lock, as a merged retraining commit would

    clone_root = tmp_path_factory.mktemp("ci-clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(first.root), str(clone_root)], check=True, env={**first.env, **GIT_ENV})
    second = Workspace(clone_root, home)
    second.git("checkout", "-q", "-b", "feature")
    second.edit("benchmark", iterations=7)
    summary2 = tmp_path_factory.mktemp("summary") / "feature.md"
    proc, ran = ci(second, summary2, PROMOTE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (second.root / "data/dataset/data.yaml").is_file(), "the data was not pulled"
    assert "train" not in ran and "evaluate" not in ran, f"results should come from the remote, ran {ran}"
    assert {"benchmark", "report"} <= ran
    diff = summary2.read_text()
    # The re-measured latency, among the compared numbers (the benchmark's own file is not declared).
    assert "metrics/deployment.json" in diff and "ms.onnx-fp32" in diff
    production = second.json("models/production/metadata.json")
    assert production["version"] == 1 and (second.root / "models/production.dvc").is_file()
    # The promotion is committed and pushed with its tag, after its files reached the DVC remote.
    pointer = (second.root / "models/production.dvc").read_text()
    assert first.git("show", "feature:models/production.dvc") == pointer
    assert first.git("show", "production-v1:models/production.dvc") == pointer
    assert "## Promoted" in diff and "production-v1" in diff
    # With the model-registry tags `dvc artifacts get <repo> yolo-detector --stage prod` reads.
    assert sorted(first.git("tag", "--points-at", "production-v1", "--list", "yolo-detector*").split()) == [
        "yolo-detector#prod#1",
        "yolo-detector@v1.0.0",
    ]
    cloud = second.run("-m", "dvc", "status", "--cloud", "--json", "models/production.dvc")
    assert cloud.returncode == 0 and json.loads(cloud.stdout or "{}") == {}, cloud.stdout

    # Where the promotion could not be pushed (a detached HEAD), the run refuses to promote and fails.
    second.git("checkout", "-q", "--detach")
    refused_summary = tmp_path_factory.mktemp("summary") / "detached.md"
    proc, _ran = ci(second, refused_summary, PROMOTE="1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "refused to promote: cannot push the promotion: HEAD is detached" in proc.stderr
    assert "## Promotion refused" in refused_summary.read_text()
    assert second.json("models/production/metadata.json") == production
    second.git("checkout", "-q", "feature")

    # Production now holds this very data: a data-triggered run ends early, successfully.
    summary3 = tmp_path_factory.mktemp("summary") / "unchanged.md"
    proc, ran = ci(second, summary3, ONLY_IF_DATA_CHANGED="1", PROMOTE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== reproduce" not in proc.stdout and ran == set()
    assert "## Retraining skipped" in summary3.read_text()
    assert second.json("models/production/metadata.json") == production
    assert first.network_attempts() == [] and second.network_attempts() == []
