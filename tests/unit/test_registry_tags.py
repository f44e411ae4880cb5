"""The model-registry tags promotion writes (issue 22, item 5): GTO's format, as DVC reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from gto.constants import assert_name_is_valid
from gto.tag import parse_name

from stages.core.config import load_params
from stages.core.errors import PipelineError
from stages.promotion import tags
from tests.conftest import REPO

IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
ARTIFACT = {"artifacts": {"yolo-detector": {"path": "models/production", "type": "model"}}}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _repo(tmp_path: Path, workspace: str = "", declared: dict | None = None) -> Path:
    """A git repository with one commit; the workspace (``workspace`` under it) holds ``dvc.yaml``."""
    repo = tmp_path / "repo"
    root = repo / workspace
    root.mkdir(parents=True)
    _git(repo, "init", "--quiet")
    (root / "dvc.yaml").write_text(yaml.safe_dump(ARTIFACT if declared is None else declared))
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", "init")
    return root


def test_the_project_declares_production_as_a_registry_artifact():
    params = load_params(REPO / "params.yaml")
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    at_production = [name for name, spec in declared.items() if spec["path"] == params.paths.production]
    assert at_production == ["yolo-detector"]
    assert_name_is_valid("yolo-detector")
    assert declared["yolo-detector"]["type"] == "model"
    assert tags.registry_name(REPO, REPO / params.paths.production) == "yolo-detector"


def test_a_promotion_is_a_version_and_a_prod_assignment_in_gtos_format(tmp_path: Path):
    root = _repo(tmp_path)
    _git(root, "tag", "-a", "-m", "by hand", "yolo-detector#staging#4")  # GTO counts every assignment
    # Signing on, with a signer that always fails: a worker or CI has no gpg agent.
    for key, value in (("tag.gpgsign", "true"), ("gpg.program", "false")):
        _git(root, "config", key, value)
    made = tags.registry_tags(root, root / "models/production", 3)
    assert made == ["yolo-detector@v3.0.0", "yolo-detector#prod#5"]
    registered = parse_name(made[0])
    assert (registered["name"], registered["version"], registered["action"].value) == (
        "yolo-detector",
        "v3.0.0",
        "register",
    )
    assigned = parse_name(made[1])
    assert (assigned["name"], assigned["stage"], assigned["counter"]) == ("yolo-detector", "prod", 5)
    head = _git(root, "rev-parse", "HEAD").strip()
    for tag in made:  # annotated (GTO skips lightweight tags), on the promotion commit
        assert _git(root, "cat-file", "-t", f"refs/tags/{tag}").strip() == "tag"
        assert _git(root, "rev-parse", f"{tag}^{{commit}}").strip() == head
    # Finished again after a kill: nothing new.
    before = _git(root, "tag", "--list").split()
    assert tags.registry_tags(root, root / "models/production", 3) == made
    assert _git(root, "tag", "--list").split() == before


def test_a_workspace_in_a_subfolder_is_named_by_its_folder(tmp_path: Path):
    root = _repo(tmp_path, "detector")
    made = tags.registry_tags(root, root / "models/production", 1)
    assert made == ["detector=yolo-detector@v1.0.0", "detector=yolo-detector#prod#1"]
    # The name DVC and GTO take: `dvc artifacts get <repo> detector:yolo-detector --stage prod`.
    assert parse_name(made[1])["name"] == "detector:yolo-detector"


def test_no_artifact_at_production_means_no_registry_tags(tmp_path: Path):
    root = _repo(tmp_path, declared={"artifacts": {"other": {"path": "models/other"}}})
    assert tags.registry_tags(root, root / "models/production", 1) == []
    assert _git(root, "tag", "--list") == ""


@pytest.mark.parametrize(
    ("declared", "error"),
    [
        ({"artifacts": {"yolo detector!": {"path": "models/production"}}}, "not one DVC's model registry accepts"),
        (
            {"artifacts": {"a": {"path": "models/production"}, "b": {"path": "./models/production"}}},
            "more than one artifact",
        ),
    ],
)
def test_an_artifact_the_registry_cannot_name_is_an_error_naming_dvc_yaml(tmp_path: Path, declared, error):
    root = _repo(tmp_path, declared=declared)
    with pytest.raises(PipelineError, match=error) as caught:
        tags.registry_name(root, root / "models/production")
    assert caught.value.path == root / "dvc.yaml"
