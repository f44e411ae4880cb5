"""The layers `make lint` checks (import-linter, contracts in pyproject.toml) cover the whole of
``stages/``, name exactly the stage entries, and fail the lint when an import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stages import PIPELINE
from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Stage entries that are not DVC stages: the gate check after `dvc repro`, and promotion.
NOT_IN_DVC = {"gate", "promote"}


def contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def layers() -> list[set[str]]:
    """Each layer of the layers contract, top first, as the set of modules it names."""
    (contract,) = [c for c in contracts().values() if c["type"] == "layers"]
    return [{m.strip() for m in layer.replace("|", ":").split(":")} for layer in contract["layers"]]


def test_every_module_of_stages_is_in_one_layer():
    named = [m for layer in layers() for m in layer]
    assert len(named) == len(set(named)), "a module in two layers"
    found = {f"stages.{p.stem}" for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    found |= {f"stages.{p.parent.name}" for p in (REPO / "stages").glob("*/__init__.py")}
    assert found == set(named) - {"flows"}, "a module of stages/ outside the layers, or a layer naming none"


def test_the_entries_layer_is_the_pipeline_and_the_gate_and_promotion():
    flows, entries, *_below = layers()
    assert flows == {"flows"}
    assert entries == {f"stages.{name}" for name in (*PIPELINE, *NOT_IN_DVC)}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in ("stages", "flows"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_hold_today(copy: Path):
    proc = _lint(copy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("stages/training/worker.py", "import stages.train", "flows -> stage entries -> domain packages -> core"),
        ("stages/benchmark.py", "import stages.build_engine", "flows -> stage entries -> domain packages -> core"),
        ("stages/core/config/root.py", "import stages.deploy", "flows -> stage entries -> domain packages -> core"),
        ("stages/backends/tensorrt.py", "import stages.deploy.engine", "backends do not import deploy"),
        ("flows/pipeline.py", "import stages.training.launch", "flows reach the domain packages only through"),
    ],
)
def test_an_import_against_a_layer_fails_the_lint(copy: Path, module: str, line: str, broken: str):
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # against the layers\n")
    proc = _lint(copy)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout[-3000:]
    assert line.split()[-1] in proc.stdout, "the report names the import"
