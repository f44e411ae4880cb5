"""Promotion leaves production in git (issue 21, item 1), in a scratch git + DVC workspace.

The issue's scenario: production v1 committed, a `dvc exp run`, a promotion to v2, then `dvc exp
apply` of the experiment (begun before v2) puts v1's pointer and folder back. The promotion committed
and tagged v2, so it is not lost: the tag holds its pointer, `dvc gc --all-tags` keeps its files, and
`git checkout production-v2 -- models/production.dvc` with `dvc checkout` brings it back complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.test_promotion_atomic import base, config, copy_of, production_state, sh

pytestmark = pytest.mark.e2e
__all__ = ["base"]  # the module fixture, shared

STAGE = """stages:
  step:
    cmd: python -c "import yaml; open('out.txt', 'w').write(str(yaml.safe_load(open('exp.yaml'))['value']))"
    params:
      - exp.yaml:
          - value
    outs:
      - out.txt
"""


def test_exp_apply_checkout_and_gc_cannot_lose_a_promoted_version(base: Path, tmp_path: Path):
    from stages.promote import run

    root = copy_of(base, tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    (root / "dvc.yaml").write_text(STAGE)
    (root / "exp.yaml").write_text("value: 1\n")
    sh(root, *dvc, "repro", "-q")
    sh(root, "git", "add", "dvc.yaml", "dvc.lock", "exp.yaml", ".gitignore")
    sh(root, "git", "commit", "-q", "-m", "a stage to experiment with")
    sh(root, *dvc, "exp", "run", "-q", "-n", "exp-before-v2", "-S", "exp.yaml:value=2")

    result = run(config(root))
    assert result.promoted and result.version == 2 and result.tag == "production-v2"
    assert production_state(root) == 2  # committed: HEAD's pointer is the folder's
    v2_pointer = (root / "models/production.dvc").read_text()

    sh(root, *dvc, "exp", "apply", "exp-before-v2")
    assert "value: 2" in (root / "exp.yaml").read_text()
    # The experiment began at v1: applying it puts v1's pointer and folder back in the workspace...
    assert (root / "models/production.dvc").read_text() != v2_pointer
    # ...but v2 is in git, and collecting garbage over the tags keeps its files.
    assert sh(root, "git", "show", "production-v2:models/production.dvc") == v2_pointer
    sh(root, *dvc, "gc", "-q", "-f", "--workspace", "--all-tags")
    sh(root, "git", "checkout", "-q", "production-v2", "--", "models/production.dvc")
    sh(root, *dvc, "checkout", "-q", "--force", "models/production.dvc")
    assert production_state(root) == 2

    # A plain `git checkout` of an older commit and back, likewise.
    sh(root, "git", "stash", "-q", "--include-untracked")
    sh(root, "git", "checkout", "-q", "HEAD~1")
    sh(root, *dvc, "checkout", "-q", "--force", "models/production.dvc")
    sh(root, "git", "checkout", "-q", "main")
    sh(root, *dvc, "checkout", "-q", "--force", "models/production.dvc")
    assert production_state(root) == 2
