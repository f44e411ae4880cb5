"""A run that finds the workspace held says so at once, naming the holder, then waits and is refused."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from stages.core.lock import WorkspaceBusy, workspace_lock


def test_waiting_for_the_lock_is_said_at_once_naming_the_holder(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="stages.core.lock")
    with workspace_lock(tmp_path, 0, "python -m flows.tune (pid 4242)"):
        start = time.time()
        with pytest.raises(WorkspaceBusy, match=r"waited 1 s"), workspace_lock(tmp_path, 1.0, "a second tune"):
            pass  # pragma: no cover - never reached: the lock is held
        refused = time.time()
    waits = [r for r in caplog.records if "waiting up to 1 s" in r.getMessage()]
    assert len(waits) == 1, caplog.text  # once, not every poll
    message = waits[0].getMessage()
    assert "workspace lock held by python -m flows.tune (pid 4242) (pid " in message and "since " in message
    assert waits[0].created - start < 0.3 < refused - start  # said before the wait, not at its end


def test_no_wait_no_waiting_message(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="stages.core.lock")
    with workspace_lock(tmp_path, 0, "holder"), pytest.raises(WorkspaceBusy), workspace_lock(tmp_path, 0, "clone"):
        pass  # pragma: no cover
    assert "waiting" not in caplog.text
