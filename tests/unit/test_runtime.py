"""Ultralytics is configured offline and project-local, in a fresh interpreter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, venv_env

PROBE = """
import json, os, sys
from pathlib import Path
from stages.core.runtime import import_ultralytics, ultralytics_config_dir
ws = Path(sys.argv[1])
import_ultralytics(ws)
from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR
from ultralytics.utils.checks import check_font
print(json.dumps({
    "online": ONLINE,
    "config_dir": str(USER_CONFIG_DIR),
    "sync": SETTINGS["sync"],
    "font": str(check_font("Arial.ttf")),
    "environ": {k: os.environ.get(k) for k in (
        "YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "MPLBACKEND", "ULTRALYTICS_SAFE_LOAD"
    )},
    "safe_load": __import__("ultralytics.nn.tasks").nn.tasks.SAFE_LOAD,
}))
"""


def test_ultralytics_runs_offline_with_project_local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # tests/conftest.py sets some of these for every test: without them gone, the process would
    # inherit them and nothing here would show that stages/core/runtime.py sets them itself.
    for name in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "MPLBACKEND", "ULTRALYTICS_SAFE_LOAD"):
        monkeypatch.delenv(name, raising=False)
    env = venv_env()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    config_dir = Path(facts["config_dir"])
    assert facts["online"] is False
    assert config_dir.is_relative_to(tmp_path / ".cache" / "ultralytics")
    assert facts["sync"] is False
    assert facts["font"] == str(config_dir / "Arial.ttf")  # found locally: no download attempted
    assert facts["environ"] == {
        "YOLO_CONFIG_DIR": str(tmp_path / ".cache" / "ultralytics"),
        "YOLO_OFFLINE": "true",
        "YOLO_AUTOINSTALL": "false",
        "MPLBACKEND": "Agg",
        "ULTRALYTICS_SAFE_LOAD": "1",  # every checkpoint load weights_only, in child processes too
    }
    assert facts["safe_load"] is True
    assert json.loads((config_dir / "settings.json").read_text())["sync"] is False
