"""Promotion's git steps under the setups teams really have: signed commits by default, and a workspace
that is a subfolder of its repository (found in review; each test fails on the code before the fix)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stages.promotion import tags

POINTER = "outs:\n- md5: {md5}.dir\n  path: production\n"
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    (repo / "README").write_text("x\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "--quiet", "-m", "init")
    return repo


def test_a_promotion_commits_and_tags_where_the_user_signs_every_commit(tmp_path: Path):
    repo = _repo(tmp_path)
    # Signing on, with a signer that always fails: a worker or CI has no gpg agent.
    for key, value in (("commit.gpgsign", "true"), ("tag.gpgsign", "true"), ("gpg.program", "false")):
        _git(repo, "config", key, value)
    _git(repo, "config", "user.email", "t@example.invalid")
    pointer = repo / "models" / "production.dvc"
    pointer.parent.mkdir()
    pointer.write_text(POINTER.format(md5="a" * 32))
    commit, tag = tags.commit(repo, pointer, 1)
    assert tag == "production-v1"
    assert _git(repo, "rev-parse", "production-v1^{commit}").strip() == commit
    assert _git(repo, "show", "--name-only", "--format=", commit).split() == ["models/production.dvc"]


def test_the_tag_check_reads_the_pointer_of_a_workspace_in_a_subfolder(tmp_path: Path):
    repo = _repo(tmp_path)
    workspace = repo / "detector"
    pointer = workspace / "models" / "production.dvc"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(POINTER.format(md5="b" * 32))
    _git(repo, "add", "detector/models/production.dvc")
    _git(repo, "commit", "--quiet", "-m", "v2")
    _git(repo, "tag", "production-v2")
    assert tags.tag_mismatch(workspace, pointer) is None
    pointer.write_text(POINTER.format(md5="c" * 32))  # an exp apply put an older pointer back
    found = tags.tag_mismatch(workspace, pointer)
    assert found is not None and "is not the latest promoted version, tag production-v2" in found
