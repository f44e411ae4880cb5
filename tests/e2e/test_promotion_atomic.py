"""Promotion as a transaction (issue 21, item 3), in a scratch git + DVC workspace with no pipeline.

Production v1 is promoted and committed; then a promotion to v2 is killed with SIGKILL at every step
(``stages.promote.STEPS``) in a process of its own. After the kill the journal says how to finish or
undo it; after the next run (``python -m stages.promote --recover``) production is v1 or v2,
complete, its folder and its DVC pointer agreeing, the pointer committed, and nothing left beside it.
A failing ``dvc add`` undoes the swap. Leftovers of the code before the journal (two renames with
pid-named folders) are cleaned, a production folder moved aside among them put back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.common import file_sha256
from stages.core.config import PromoteParams
from stages.core.errors import PipelineError
from tests.conftest import REPO, venv_env
from tests.e2e.workspace import GIT_ENV

pytestmark = pytest.mark.e2e

CANDIDATE = (
    "model.pt",
    "model_card.md",
    "train.json",
    "train_facts.json",
    "export_facts.json",
    "deploy_facts.json",
    "engine_facts.json",
    "benchmark.json",
    "benchmark_facts.json",
    "validate.json",
    "model.onnx",
)
METRICS = {
    "evaluate.json": {
        "map50": 0.5,
        "map50_95": 0.3,
        "precision": 0.5,
        "recall": 0.5,
        "gates": {"passed": 1, "failed": 0, "checks": {}},
    },
    "export.json": {"exported": 1, "parity": {"passed": True}},
    "deploy.json": {"onnx-fp32": {"deployable": 1}},
    "engine.json": {"deployable": 0},
}
# The prepared data.yaml the candidate was trained on: its class names (production records them).
SHAPES = {"train": "images/train", "val": "images/val", "names": ["circle", "square", "triangle"]}

# Runs one promotion and kills itself with SIGKILL at the step named on its command line.
DRIVER = """
import json, os, signal, sys
from pathlib import Path
import stages.promote as promote
import stages.promotion.transaction as transaction
target = sys.argv[2]
transaction.step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == target else None
cfg = promote.PromoteConfig.model_validate_json(Path(sys.argv[1]).read_text())
promote.run(cfg)
"""


def env() -> dict[str, str]:
    return {**venv_env(), **GIT_ENV, "PYTHONPATH": str(REPO)}


def sh(root: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=root, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def config(root: Path):
    from stages.promote import PromoteConfig

    names = [*CANDIDATE, *METRICS]
    return PromoteConfig(
        workspace=root,
        dataset="data/dataset",
        production=root / "models/production",
        report=root / "reports/promotion.json",
        files={name: root / "candidate" / name for name in names},
        data_yaml=root / "candidate" / "data.yaml",
        engine_dir=root / "models/engine",
        deploy_dir=root / "models/deploy",
        options=PromoteParams(),
    )


def write_candidate(root: Path, model: bytes, data_yaml: dict | None = None) -> None:
    folder = root / "candidate"
    folder.mkdir(exist_ok=True)
    for name in CANDIDATE:
        (folder / name).write_bytes(model + name.encode())
    for name, data in METRICS.items():
        (folder / name).write_text(json.dumps(data))
    (folder / "data.yaml").write_text(json.dumps(data_yaml or SHAPES))  # JSON is YAML


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC workspace whose production v1 is committed and tagged, with a v2 candidate."""
    from stages.promote import run

    root = tmp_path_factory.mktemp("promote-base") / "ws"
    (root / "data/dataset").mkdir(parents=True)
    (root / "data/dataset/a.txt").write_text("images")
    (root / ".gitignore").write_text("/candidate/\n/reports/\n")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")  # its paths: models/production, data/dataset
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    sh(root, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    sh(root, sys.executable, "-m", "dvc", "add", "-q", "data/dataset")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "data")
    write_candidate(root, b"v1")
    result = run(config(root))
    assert result.promoted and result.version == 1 and result.tag == "production-v1"
    write_candidate(root, b"v2")
    return root


def copy_of(base: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(base, root, symlinks=True)
    return root


def production_state(root: Path) -> int:
    """The version production is, after checking it is complete and its folder, pointer and git agree."""
    from stages.promote import production_mismatch, tag_mismatch

    production = root / "models/production"
    meta = json.loads((production / "metadata.json").read_text())
    for name, digest in meta["files"].items():
        assert file_sha256(production / name) == digest, f"v{meta['version']}: {name} is not the one promoted"
    assert production_mismatch(root, production) is None
    assert tag_mismatch(root, root / "models/production.dvc") is None
    committed = sh(root, "git", "show", "HEAD:models/production.dvc")
    assert committed == (root / "models/production.dvc").read_text(), "the pointer in the folder is not committed"
    assert sh(root, "git", "tag", "--list", f"production-v{meta['version']}").strip()
    return meta["version"]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models").iterdir() if p.name.startswith(".production"))


@pytest.mark.parametrize(
    "step", ["staged", "journaled", "retired", "swapped", "versioned", "committed", "reported", "cleaned"]
)
def test_a_promotion_killed_at_any_step_is_finished_or_undone_by_the_next_run(base: Path, tmp_path: Path, step: str):
    from stages.promote import STEPS

    assert step in STEPS
    root = copy_of(base, tmp_path)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(config(root).model_dump_json())
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, str(cfg_file), step], cwd=root, env=env(), capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    # Before the swap's first rename production is untouched; from it on, the journal is there to act on.
    journal = root / "models/.production.promotion.json"
    assert journal.is_file() or production_state(root) == 1, f"killed at {step}: no journal, production not v1"

    recovered = subprocess.run(
        [sys.executable, "-m", "stages.promote", "--recover"], cwd=root, env=env(), capture_output=True, text=True
    )
    assert recovered.returncode == 0, recovered.stderr
    version = production_state(root)
    # Undone before the new folder is in place, finished from then on.
    assert version == (1 if STEPS.index(step) < STEPS.index("swapped") else 2), f"killed at {step}"
    assert leftovers(root) == [], f"killed at {step}: left {leftovers(root)}"

    # The next promotion goes on from there: v2 again when undone, nothing to do when finished.
    again = subprocess.run(
        [sys.executable, "-c", DRIVER, str(cfg_file), "none"], cwd=root, env=env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert production_state(root) == 2 and leftovers(root) == []


@pytest.mark.parametrize("failing", ["dvc_add", "commit"])
def test_a_failing_dvc_add_or_commit_leaves_the_previous_production(
    base: Path, tmp_path: Path, monkeypatch, failing: str
):
    import stages.promote as promote
    from stages.promotion import tags, transaction

    root = copy_of(base, tmp_path)
    module = tags if failing == "commit" else transaction

    def fail(workspace: Path, target: Path, *args):
        if failing == "commit":  # as far as a commit goes before failing: the new pointer staged
            sh(root, "git", "add", "models/production.dvc")
        raise PipelineError("failed: no space left on device", stage="promote", path=target)

    monkeypatch.setattr(module, failing, fail)
    with pytest.raises(PipelineError, match=r"still the previous version.*no space left"):
        promote.run(config(root))
    monkeypatch.undo()
    assert production_state(root) == 1 and leftovers(root) == []
    assert sh(root, "git", "status", "--porcelain", "--", "models/production.dvc") == ""
    report = json.loads((root / "reports/promotion.json").read_text())
    assert report["promoted"] is False and "no space left" in report["checks"][-1]["message"]


def test_leftovers_of_the_two_renames_before_the_journal_are_cleaned(base: Path, tmp_path: Path):
    from stages.promote import recover

    root = copy_of(base, tmp_path)
    models = root / "models"
    # Killed between the old code's renames: production moved aside, the new one still in staging.
    (models / "production").rename(models / ".production.retired-4242")
    shutil.copytree(models / ".production.retired-4242", models / ".production.staging-4242")
    assert recover(config(root)) is not None
    assert production_state(root) == 1 and leftovers(root) == []


def test_a_pointer_older_than_the_newest_tag_is_refused(base: Path, tmp_path: Path):
    """What `dvc exp apply` of an experiment begun before the last promotion does to the pointer."""
    from stages.promote import PromotionRefused, run

    root = copy_of(base, tmp_path)
    assert run(config(root)).version == 2
    sh(root, "git", "checkout", "-q", "production-v1", "--", "models/production.dvc")
    sh(root, sys.executable, "-m", "dvc", "checkout", "-q", "--force", "models/production.dvc")
    write_candidate(root, b"v3")
    with pytest.raises(PromotionRefused, match="not the latest promoted version, tag production-v2"):
        run(config(root))
    sh(root, "git", "checkout", "-q", "production-v2", "--", "models/production.dvc")
    sh(root, sys.executable, "-m", "dvc", "checkout", "-q", "models/production.dvc")
    assert run(config(root)).version == 3
    assert production_state(root) == 3


def test_the_lock_is_held_for_the_whole_promotion(base: Path, tmp_path: Path):
    """``python -m stages.promote`` waits for, then is refused by, a run holding the workspace."""
    from stages.core.lock import workspace_lock

    root = copy_of(base, tmp_path)
    with workspace_lock(root, 0, "test holder"):
        proc = subprocess.run(
            [sys.executable, "-m", "stages.core.lock", "--timeout", "0", "--", "true"],
            cwd=root,
            env=env(),
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 1 and "test holder" in proc.stderr
    assert os.environ.get("PIPELINE_LOCK_TOKEN") is None


def test_files_changed_between_the_checks_and_the_copy_are_refused(base: Path, tmp_path: Path, monkeypatch):
    """What a run not holding the workspace (a plain `dvc repro`) can do while promotion copies."""
    import stages.promote as promote

    root = copy_of(base, tmp_path)
    checked = promote.promotion_checks

    def checks_then_retrained(*args, **kwargs):
        result = checked(*args, **kwargs)
        (root / "candidate" / "model.pt").write_bytes(b"another model, not the one checked")
        return result

    monkeypatch.setattr(promote, "promotion_checks", checks_then_retrained)
    with pytest.raises(promote.PromotionRefused, match=r"changed during promotion: model\.pt"):
        promote.run(config(root))
    assert production_state(root) == 1 and leftovers(root) == []
