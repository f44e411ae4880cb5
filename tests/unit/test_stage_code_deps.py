"""A stage's dvc.yaml deps name every file of code it runs, outside the core (issue 23).

The code a stage runs is what its entry imports, followed through ``stages/`` (imports inside
functions too: ``train`` imports its trainer only when it trains). The core (``stages/core/``) is
left to each stage's judgement, as dvc.yaml's header says: its plumbing (config, I/O, errors) is left
out on purpose so that a reworded error retrains nothing. A module moved into a domain package
without the stage's deps following it would let ``dvc repro`` skip a stage whose code changed.
A package's ``__init__.py`` counts when it is imported by name (``from stages.training import spec``),
not when it is only the parent of an imported module (such files hold a docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from stages import PIPELINE
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _source(module: str) -> Path | None:
    """The file of a ``stages`` module or package, or ``None`` for a name that is no module (an attribute)."""
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, module: str) -> set[str]:
    """Every name ``path`` imports, absolute; ``from a import b`` gives ``a`` and ``a.b`` (b may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def code_run_by(stage: str) -> set[str]:
    """The files of ``stages/`` the stage's entry imports, directly or not, relative to the repository."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [f"stages.{stage}"]
    while todo:
        module = todo.pop()
        if module in seen or not module.startswith("stages."):
            continue
        seen.add(module)
        path = _source(module)
        if path is not None:
            files.add(path.relative_to(REPO).as_posix())
            todo.extend(_imported(path, module))
    return files


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_the_import_walk_finds_lazy_imports_and_packages():
    """What the walk must see for the check to mean anything: an import inside a function, a package's modules."""
    train = code_run_by("train")
    assert "stages/training/trainer.py" in train, "train imports its trainer inside a function"
    assert {"stages/training/outputs.py", "stages/training/ddp.py", "stages/core/runtime.py"} <= train
    assert "stages/data/validation/labels.py" in code_run_by("validate")


def _is_code(file: str) -> bool:
    """False for a module that holds nothing but its docstring (a package's ``__init__.py`` that only
    says what lives there): no change to it can change what a stage does."""
    body = ast.parse((REPO / file).read_text(encoding="utf-8")).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.mark.parametrize("stage", [name for name in PIPELINE if name in DVC])
def test_a_stage_depends_on_every_file_of_code_it_runs(stage: str):
    deps = [dep for dep in DVC[stage]["deps"] if dep.startswith("stages/")]
    missing = sorted(
        f for f in code_run_by(stage) if not f.startswith("stages/core/") and _is_code(f) and not _covered(f, deps)
    )
    assert not missing, f"dvc.yaml: stage {stage} runs {missing} but does not depend on it"
