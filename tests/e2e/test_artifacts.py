"""Production reachable the way DVC users fetch models (issue 22, item 5).

A git + DVC workspace with a git remote (a bare repository on disk) and a DVC remote (a folder) promotes
v1, then v2, pushing each as CI does (``dvc push``, then ``git push`` of the branch and the tags). A
serving machine is a fresh, empty folder with nothing but DVC: ``dvc artifacts get <repo> yolo-detector
--stage prod`` gives v2's files and ``--rev v1.0.0`` v1's, read from the tags promotion wrote in GTO's
format and the artifact the project's ``dvc.yaml`` declares. v2 detects other classes and starts a new
production line (issue 25, item 2): v1, of the first line, stays fetchable by its version. Every DVC
and GTO process of the serving side runs under the network guard (``tests/netguard``): nothing but
loopback and files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.test_promotion_atomic import SHAPES, config, env, sh, write_candidate
from tests.e2e.workspace import NETGUARD

pytestmark = pytest.mark.e2e

NAME = "yolo-detector"
# v2's dataset: other classes than v1's shapes, so it is promoted as a new production line.
OTHER = {**SHAPES, "names": ["person", "bicycle", "car"]}
CLASSES = {1: SHAPES["names"], 2: OTHER["names"]}


def _guarded(log: Path) -> dict[str, str]:
    """The environment of a serving machine's processes: the network guard on, no Studio token."""
    guarded = {k: v for k, v in env().items() if not k.startswith("DVC_STUDIO")}
    guarded["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), str(REPO)])
    guarded["NETGUARD_LOG"] = str(log)
    return guarded


def _get(origin: Path, cwd: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dvc", "artifacts", "get", str(origin), *args],
        cwd=cwd,
        env=_guarded(log),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bare git repository of a workspace that promoted and pushed v1 and then v2."""
    from stages.promote import run

    top = tmp_path_factory.mktemp("registry")
    origin, storage, root = top / "origin.git", top / "storage", top / "ws"
    sh(top, "git", "init", "-q", "--bare", "-b", "main", str(origin))  # HEAD: the branch pushed
    (root / "data/dataset").mkdir(parents=True)
    (root / "data/dataset/a.txt").write_text("images")
    (root / ".gitignore").write_text("/candidate/\n/reports/\n")
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())  # paths.production: models/production
    # The project's own declaration of the artifact, alone: no stage, so `dvc status` has nothing to check.
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": declared}))
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    sh(root, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    # Absolute: a clone on a serving machine reads the remote from the committed .dvc/config.
    sh(root, sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "shared", str(storage))
    sh(root, sys.executable, "-m", "dvc", "add", "-q", "data/dataset")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "data and the registry's artifact")
    sh(root, "git", "remote", "add", "origin", str(origin))
    for version in (1, 2):
        write_candidate(root, f"v{version}".encode(), {**SHAPES, "names": CLASSES[version]})
        new_line = "other classes" if version == 2 else None
        result = run(config(root).model_copy(update={"new_line": new_line}))
        assert result.promoted and result.version == version and result.line == version
        assert result.registry_tags == [f"{NAME}@v{version}.0.0", f"{NAME}#prod#{version}"]
        # As CI does: the files on the DVC remote first, then the commit and its tags.
        sh(root, sys.executable, "-m", "dvc", "push", "-q")
        sh(root, "git", "push", "-q", "origin", "main", "--tags")
    return origin


def test_a_fresh_folder_fetches_production_and_any_earlier_version(origin: Path, tmp_path: Path):
    serving, log = tmp_path / "serving", tmp_path / "netguard.log"
    serving.mkdir()
    for args, model in (
        (["--stage", "prod", "-o", "prod"], b"v2"),
        (["--rev", "v1.0.0", "-o", "v1"], b"v1"),
        (["--rev", "v2.0.0", "-o", "v2"], b"v2"),
    ):
        proc = _get(origin, serving, log, NAME, *args)
        assert proc.returncode == 0, proc.stderr
        got = serving / args[-1]
        assert (got / "model.pt").read_bytes() == model + b"model.pt", args
        assert (got / "model.onnx").read_bytes() == model + b"model.onnx", args
        metadata = json.loads((got / "metadata.json").read_text())
        assert metadata["version"] == int(model[1:]), args
        assert metadata["classes"] == CLASSES[metadata["version"]], args
        assert metadata["line"]["number"] == metadata["version"], args
    assert sorted(p.name for p in serving.iterdir()) == ["prod", "v1", "v2"], "a serving machine needs nothing else"
    assert not log.exists() or log.read_text() == "", f"reached beyond loopback: {log.read_text()}"


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["no-such-model", "--stage", "prod"], "Unable to find artifact 'no-such-model @ prod'"),
        ([NAME, "--stage", "staging"], f"Unable to find artifact '{NAME} @ staging'"),
        ([NAME, "--rev", "v9.0.0"], f"Unable to find artifact '{NAME} @ v9.0.0'"),
        ([NAME, "--rev", "v1"], f"Unable to find artifact '{NAME} @ v1'"),  # GTO's versions are semver
    ],
)
def test_a_wrong_name_stage_or_version_is_a_clear_error(origin: Path, tmp_path: Path, args: list[str], shown: str):
    log = tmp_path / "netguard.log"
    proc = _get(origin, tmp_path, log, *args, "-o", "out")
    assert proc.returncode == 1
    assert shown in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not log.exists() or log.read_text() == "", f"reached beyond loopback: {log.read_text()}"


def _guarded_run(cmd: list[str], cwd: Path, log: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_guarded(log), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc.stdout


# What DVC's Python API says an artifact reference resolves to (the call `dvc artifacts get` makes first).
DVC_SHOW = (
    "import json, sys, dvc.api; "
    "print(json.dumps(dvc.api.artifacts_show(sys.argv[1], repo=sys.argv[2], **json.loads(sys.argv[3]))))"
)


def test_gto_and_dvc_agree_on_what_is_in_production(origin: Path, tmp_path: Path):
    log = tmp_path / "netguard.log"
    gto = str(Path(sys.executable).parent / "gto")
    registry = json.loads(_guarded_run([gto, "show", "--json", "-r", str(origin)], tmp_path, log))
    assert registry[NAME]["version"] == "v2.0.0" and registry[NAME]["stage"] == {"prod": "v2.0.0"}
    versions = json.loads(_guarded_run([gto, "show", NAME, "--json", "-r", str(origin)], tmp_path, log))
    commits = {v["version"]: v["commit_hexsha"] for v in versions}
    assert sorted(commits) == ["v1.0.0", "v2.0.0"]
    for asked, version in (({"stage": "prod"}, "v2.0.0"), ({"version": "v1.0.0"}, "v1.0.0"), ({}, "v2.0.0")):
        shown = json.loads(
            _guarded_run([sys.executable, "-c", DVC_SHOW, NAME, str(origin), json.dumps(asked)], tmp_path, log)
        )
        assert shown == {"rev": commits[version], "path": os.path.join("models", "production")}, asked
    # The same commits the promotion's own tags name.
    assert sh(origin, "git", "rev-parse", "production-v2^{commit}").strip() == commits["v2.0.0"]
    assert not log.exists() or log.read_text() == "", f"reached beyond loopback: {log.read_text()}"


def test_an_artifact_name_the_registry_refuses_changes_nothing(origin: Path, tmp_path: Path):
    """A ``dvc.yaml`` that names production in a way GTO cannot tag is refused before the swap, not after."""
    from stages.core.errors import PipelineError
    from stages.promote import run

    root = tmp_path / "ws"
    shutil.copytree(origin.parent / "ws", root, symlinks=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": {"yolo detector!": {"path": "models/production"}}}))
    tags_before = sh(root, "git", "tag", "--list")
    write_candidate(root, b"v3", OTHER)  # production v2's classes: every check passes
    with pytest.raises(PipelineError, match="not one DVC's model registry accepts") as caught:
        run(config(root))
    assert caught.value.path == root / "dvc.yaml" and caught.value.key == "artifacts.yolo detector!"
    assert json.loads((root / "models/production/metadata.json").read_text())["version"] == 2
    assert sh(root, "git", "tag", "--list") == tags_before
    assert sorted(p.name for p in (root / "models").iterdir()) == [".gitignore", "production", "production.dvc"]
