"""Fleet mode's pure pieces: the pinned workspace, the production tag's name, a lost promotion race."""

from pathlib import Path

import pytest

from flows.pinned import check_pinned_workspace
from flows.remote import _lost_race, production_tag_version
from stages.core.errors import PipelineError


def test_a_deployment_run_cannot_move_its_workspace(tmp_path: Path):
    pinned, elsewhere = tmp_path / "pinned", tmp_path / "elsewhere"
    pinned.mkdir()
    elsewhere.mkdir()
    with pytest.raises(PipelineError, match=r"works in .*pinned.*cannot move it elsewhere") as refused:
        check_pinned_workspace(str(elsewhere), "a-deployment-id", cwd=pinned)
    assert refused.value.key == "workspace"
    check_pinned_workspace(str(pinned / "."), "a-deployment-id", cwd=pinned)  # its own folder, however spelled
    check_pinned_workspace(str(elsewhere), None, cwd=pinned)  # not a deployment run: python -m flows.pipeline


def test_only_production_tags_name_a_version():
    assert production_tag_version("production-v12") == 12
    for other in ("production-v", "production-vx", "v1", "production-v1-rc", "release-1"):
        assert production_tag_version(other) is None


def test_a_rejected_tag_is_a_lost_race_and_nothing_else_is():
    rejected = (
        "To /r.git\n=\tHEAD:refs/heads/results/x\t[up to date]\n"
        "!\trefs/tags/production-v2:refs/tags/production-v2\t[rejected] (already exists)\nDone\n"
    )
    assert _lost_race(rejected, "production-v2")
    assert not _lost_race(rejected, None)  # no promotion pushed: another failure
    unreachable = "fatal: '/gone.git' does not appear to be a git repository\n"
    assert not _lost_race(unreachable, "production-v2")
