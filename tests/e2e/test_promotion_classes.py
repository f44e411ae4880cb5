"""Production knows its dataset (issue 25, item 2), in the scratch git + DVC workspace of the promotion tests.

Production v1 detects the shapes. A candidate trained on another dataset (other class names) with a
lower mAP50-95 is refused for its classes, both named, with the command that starts a new production
line, and not for a regression against a model of other classes. Promoted with ``new_line``, it is
version 2 of line 2; v1 stays where its tag points, and a checkout of the tag gives it back complete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.e2e.test_promotion_atomic import SHAPES, base, config, copy_of, production_state, sh, write_candidate

pytestmark = pytest.mark.e2e
__all__ = ["base"]  # the module fixture, shared

COCO = {**SHAPES, "names": ["person", "bicycle", "car", "motorcycle"]}


def other_dataset_candidate(root: Path, model: bytes = b"coco") -> None:
    """The issue's candidate: trained on coco-like data, its mAP50-95 far below the shapes model's."""
    write_candidate(root, model, COCO)
    evaluate = root / "candidate/evaluate.json"
    evaluate.write_text(json.dumps({**json.loads(evaluate.read_text()), "map50_95": 0.0}))


def test_a_candidate_of_other_classes_is_refused_for_its_classes_not_a_regression(base: Path, tmp_path: Path):
    from stages.promote import PromotionRefused, run

    root = copy_of(base, tmp_path)
    other_dataset_candidate(root)
    with pytest.raises(PromotionRefused) as refused:
        run(config(root))
    message = refused.value.message
    assert message.startswith("not promoted: same classes"), message
    assert "4 vs 3 classes; id 0: 'person' vs 'circle'" in message
    assert 'python -m stages.promote --new-line "<reason>"' in message
    assert "no regression" not in message  # the old, misleading reason: 0.0000 vs production v1 0.3000
    report = json.loads((root / "reports/promotion.json").read_text())
    assert report["promoted"] is False and report["classes"] == COCO["names"]
    assert production_state(root) == 1


def test_a_new_line_promotes_the_next_version_and_keeps_the_old_one_fetchable(base: Path, tmp_path: Path):
    from stages.promote import run

    root = copy_of(base, tmp_path)
    assert json.loads((root / "models/production/metadata.json").read_text())["classes"] == SHAPES["names"]
    other_dataset_candidate(root)
    result = run(config(root).model_copy(update={"new_line": "coco128 instead of the shapes"}))
    assert result.promoted and result.version == 2 and result.tag == "production-v2"
    assert (result.line, result.new_line, result.classes) == (2, "coco128 instead of the shapes", COCO["names"])
    assert "no regression" not in {c.name for c in result.checks}
    assert production_state(root) == 2
    meta = json.loads((root / "models/production/metadata.json").read_text())
    assert meta["classes"] == COCO["names"]
    assert meta["line"] == {"number": 2, "reason": "coco128 instead of the shapes", "started_at": 2}
    assert json.loads((root / "reports/promotion.json").read_text())["line"] == 2

    # v1 is where its tag points: checked out, it is the shapes model, complete.
    sh(root, "git", "checkout", "-q", "production-v1", "--", "models/production.dvc")
    sh(root, sys.executable, "-m", "dvc", "checkout", "-q", "--force", "models/production.dvc")
    old = json.loads((root / "models/production/metadata.json").read_text())
    assert (old["version"], old["classes"]) == (1, SHAPES["names"])
    assert (root / "models/production/model.pt").read_bytes() == b"v1model.pt"
    sh(root, "git", "checkout", "-q", "production-v2", "--", "models/production.dvc")
    sh(root, sys.executable, "-m", "dvc", "checkout", "-q", "--force", "models/production.dvc")
    assert production_state(root) == 2

    # The line goes on: the next candidate of its classes is compared with v2 (no lower) and continues line 2.
    other_dataset_candidate(root, b"coco2")
    after = run(config(root))
    assert after.promoted and after.version == 3 and after.line == 2 and after.new_line is None
    assert any(c.name == "no regression" and "vs production v2" in c.message for c in after.checks)
    line = json.loads((root / "models/production/metadata.json").read_text())["line"]
    assert line == {"number": 2, "reason": "coco128 instead of the shapes", "started_at": 2}
