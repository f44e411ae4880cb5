"""The params models' layout: one module per ``params.yaml`` section, so that adding a key touches one place.

Each section of ``Params`` has a module of ``stages/core/config/`` named after it, which defines the
section's model and every model nested in it; no other module defines a section model, and no section
module is left without its section.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import stages.core.config as config_package
from stages.core.config import Params
from tests.conftest import REPO

# The two modules of the package that are no section: what sections share, and the composition.
NOT_SECTIONS = {"base", "root"}
PACKAGE = config_package.__name__


def _sections() -> dict[str, type[BaseModel]]:
    """Each section of ``Params`` as ``params.yaml`` names it, with its model."""
    return {field.alias or name: field.annotation for name, field in Params.model_fields.items()}


def _models_in(annotation: typing.Any) -> set[type[BaseModel]]:
    """The pydantic models an annotation names, through list, dict, union and Literal alike."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {model for arg in typing.get_args(annotation) for model in _models_in(arg)}


def _reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every model nested in its fields, at any depth."""
    seen = {model}
    todo = [model]
    while todo:
        for field in todo.pop().model_fields.values():
            for nested in _models_in(field.annotation) - seen:
                seen.add(nested)
                todo.append(nested)
    return seen


def _models_defined_in(module_name: str) -> set[type[BaseModel]]:
    module = importlib.import_module(module_name)
    return {
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == module_name
    }


def _section_modules() -> set[str]:
    return {info.name for info in pkgutil.iter_modules(config_package.__path__)} - NOT_SECTIONS


def test_every_section_has_its_module_and_every_module_its_section():
    assert set(_sections()) == _section_modules()


@pytest.mark.parametrize("section", sorted(_sections()))
def test_a_section_and_every_model_nested_in_it_live_in_the_module_named_after_it(section: str):
    model = _sections()[section]
    module_name = f"{PACKAGE}.{section}"
    assert model.__module__ == module_name, f"{model.__name__} is the '{section}' section: define it in {module_name}"
    reachable = _reachable(model)
    strays = sorted(m.__name__ for m in reachable if m.__module__ != module_name)
    assert not strays, f"models nested in '{section}' must be defined in {module_name}, not elsewhere: {strays}"
    unused = sorted(m.__name__ for m in _models_defined_in(module_name) - reachable)
    assert not unused, f"{module_name} defines models its section does not use: {unused}"


def test_the_root_defines_only_params_and_the_base_no_section():
    assert _models_defined_in(f"{PACKAGE}.root") == {Params}
    assert {m.__name__ for m in _models_defined_in(f"{PACKAGE}.base")} == {"_Section"}


def test_the_params_file_has_the_sections_in_the_models_order():
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert list(data) == list(_sections())


@pytest.mark.parametrize("path", sorted(Path(config_package.__file__).parent.glob("*.py")), ids=lambda p: p.name)
def test_every_module_of_the_package_stays_small(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"{path.name} has {lines} lines: split it (one module per section)"
