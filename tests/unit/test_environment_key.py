"""The environment stage's cheap check: the full fingerprint runs exactly when something it is made of
may have changed, and a no-op run neither imports pydantic nor rewrites the fingerprint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages import environment
from stages.core import fingerprint
from tests.conftest import REPO


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _full_runs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full fingerprint the stage runs (and still run it)."""
    calls: list[Path] = []
    real = fingerprint.run

    def spy(cfg: fingerprint.EnvironmentConfig) -> fingerprint.EnvironmentResult:
        calls.append(cfg.output)
        return real(cfg)

    monkeypatch.setattr(fingerprint, "run", spy)
    return calls


def test_full_fingerprint_runs_once_then_only_when_an_input_changes(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    calls = _full_runs(monkeypatch)
    assert environment.main([]) == 0
    output = workspace / "reports/environment.json"
    assert calls == [output] and json.loads(output.read_text())["cpu_count"] == os.cpu_count()
    memo = json.loads((workspace / environment.KEY_FILE).read_text())
    assert memo["output"] == "reports/environment.json" and memo["fingerprint"] == output.read_text()

    assert environment.main([]) == 0
    assert len(calls) == 1, "nothing changed: the full fingerprint must not run again"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert environment.main([]) == 0
    assert len(calls) == 2, "another CUDA_VISIBLE_DEVICES is another machine for the fingerprint"

    with (workspace / "params.yaml").open("a") as fh:
        fh.write("# edited\n")
    assert environment.main([]) == 0
    assert len(calls) == 3, "changed params are validated again"

    recorded = output.read_text()
    output.unlink()  # what DVC does to a stage's outputs before it runs the stage
    assert environment.main([]) == 0
    assert len(calls) == 3 and output.read_text() == recorded, "the recorded fingerprint is written again"
    output.write_text("{}\n")
    assert environment.main([]) == 0
    assert len(calls) == 3 and output.read_text() == recorded, "a fingerprint edited by hand is put right"

    assert environment.main(["--full"]) == 0
    assert len(calls) == 4


def test_a_package_installed_or_removed_changes_the_key(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    site = workspace / "lib" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    before = environment.machine_key(workspace / "params.yaml")
    assert environment.machine_key(workspace / "params.yaml") == before
    os.utime(site, ns=(1, 1))  # what adding or removing an entry does to the folder
    assert environment.machine_key(workspace / "params.yaml") != before
    # The workspace's own folder (on the path as the current directory) changes with every dvc.lock
    # write, and must not change the key.
    monkeypatch.setattr(sys, "path", [str(workspace), *sys.path])
    now = environment.machine_key(workspace / "params.yaml")
    (workspace / "dvc.lock").write_text("changed\n")
    assert environment.machine_key(workspace / "params.yaml") == now


def test_unknown_params_key_is_refused_even_after_a_cached_run(workspace: Path, capsys: pytest.CaptureFixture[str]):
    assert environment.main([]) == 0
    with (workspace / "params.yaml").open("a") as fh:
        fh.write("trian:\n  epochs: 3\n")
    assert environment.main([]) == 2
    assert "unknown key 'trian'" in capsys.readouterr().err


def test_a_memo_not_written_by_this_code_runs_the_full_fingerprint(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    calls = _full_runs(monkeypatch)
    (workspace / environment.KEY_FILE).parent.mkdir(parents=True)
    key = environment.machine_key(workspace / "params.yaml")
    wrong_type = json.dumps({"key": key, "output": "reports/environment.json", "fingerprint": 3})
    outside = json.dumps({"key": key, "output": "../outside.json", "fingerprint": "{}"})
    for text in ("not json", "[]", '{"key": 1}', wrong_type, outside):
        (workspace / environment.KEY_FILE).write_text(text)
        assert environment.main([]) == 0
    assert len(calls) == 5 and not (workspace.parent / "outside.json").exists()


def test_the_cached_check_imports_neither_pydantic_nor_the_params_models(workspace: Path):
    probe = (
        "import sys; from stages import environment; rc = environment.main([]); "
        "print(rc, 'pydantic' in sys.modules, 'stages.core.config' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, "-c", probe], cwd=workspace, env=env, capture_output=True, text=True)
    assert first.stdout.split() == ["0", "True", "True"], first.stderr
    second = subprocess.run([sys.executable, "-c", probe], cwd=workspace, env=env, capture_output=True, text=True)
    assert second.stdout.split() == ["0", "False", "False"], second.stderr


def test_the_key_reads_this_stage_and_every_params_model_module():
    # A file the key names but cannot find counts as "<missing>" on every run, so a change to it
    # would never run the full fingerprint nor validate params.yaml again.
    missing = [str(path) for path in environment._CODE if not path.is_file()]
    assert not missing, f"the environment key names files that do not exist: {missing}"
    config_modules = set((REPO / "stages/core/config").glob("*.py"))
    wanted = {REPO / "stages/environment.py", REPO / "stages/core/fingerprint.py", *config_modules}
    assert len(config_modules) > 1 and wanted <= {path.resolve() for path in environment._CODE}
