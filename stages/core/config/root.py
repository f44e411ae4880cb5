"""Typed configuration: ``params.yaml`` parsed once into frozen pydantic models; the root of them.

``params.yaml`` is the only configuration of the pipeline. Each stage has a section named after it;
``paths`` holds every input and output location, and ``dvc.yaml`` reads the same values through DVC
templating, so a path is written down exactly once. Unknown or misspelled keys are refused with an
error naming the key and the file.

Each section's model lives in its own module of this package, named after the section
(``train.py`` holds ``TrainParams``); this module composes them into ``Params`` and holds what reads
across sections: the tuning space's checks against the other sections, dotted keys, the unknown-key
suggestions, and reading ``params.yaml``. Adding a key to a section touches that section's module
(and ``params.yaml``, which lists every key); only a new section touches this one.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from stages.core.config.base import KeyedValueError, _Section
from stages.core.config.benchmark import BenchmarkParams
from stages.core.config.deploy import DeployParams
from stages.core.config.engine import EngineParams
from stages.core.config.evaluate import EvaluateParams
from stages.core.config.export import ExportParams
from stages.core.config.orchestration import OrchestrationParams
from stages.core.config.paths import PathsParams
from stages.core.config.prepare import PrepareParams
from stages.core.config.promote import PromoteParams
from stages.core.config.report import ReportParams
from stages.core.config.train import TrainParams
from stages.core.config.tune import TuneParams
from stages.core.config.validate import ValidateParams
from stages.core.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
# OmegaConf's interpolation (``${oc.env:NAME}``, ``${other.key}``): never allowed in a params value.
INTERPOLATION = "${"
# Sections that shape the pipeline's outputs (the model card prints these). `promote` and
# `orchestration` steer what happens around the pipeline and never change an output of dvc repro.
PIPELINE_SECTIONS = (
    "paths",
    "prepare",
    "validate",
    "train",
    "evaluate",
    "export",
    "deploy",
    "engine",
    "benchmark",
    "report",
)


def _leaf_annotation(key: str) -> Any:
    """The annotation of the params field a valid dotted ``key`` names."""
    model: Any = Params
    field = None
    for part in key.split("."):
        field = next(f for name, f in model.model_fields.items() if part == (f.alias or name))
        model = field.annotation
    return field.annotation if field else None


def _not_a_params_key(key: str) -> str:
    """Why ``key`` (dotted, as in ``params.yaml``) cannot be tuned, or ``""`` when it can."""
    model: type[BaseModel] = Params
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{'.'.join([*parts[:depth], close[0]])}'?" if close else ""
            return f"is not a params key: '{'.'.join(parts[: depth + 1])}' does not exist{hint}"
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        last = depth == len(parts) - 1
        if last and nested:
            return "names a whole section, not one value"
        if not last and not nested:
            return f"is not a params key: '{'.'.join(parts[: depth + 1])}' holds a value, not a section"
        if nested:
            model = field.annotation  # type: ignore[assignment]
    if parts[0] in {"tune", "paths"}:
        return f"is not a pipeline setting ('{parts[0]}' is never tuned)"
    return ""


class Params(_Section):
    """All of ``params.yaml``."""

    paths: PathsParams = Field(default_factory=PathsParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)
    deploy: DeployParams = Field(default_factory=DeployParams)
    engine: EngineParams = Field(default_factory=EngineParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    report: ReportParams = Field(default_factory=ReportParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)
    tune: TuneParams = Field(default_factory=TuneParams)  # last: its check reads every section above

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("tune")
    @classmethod
    def _space_within_params(cls, value: TuneParams, info: ValidationInfo) -> TuneParams:
        # Both ends of each range, and every choice, must be values the params accept (train.lr0 > 0,
        # train.imgsz a multiple of 32, ...), checked against the rest of this file. Sections have no
        # checks across each other, so validating the key's own section is enough (and cheap: every
        # stage process loads the params).
        fields = {field.alias or name: (name, field) for name, field in cls.model_fields.items()}
        for key, dim in value.space.items():
            section, _, rest = key.partition(".")
            name, field = fields[section]
            if name not in info.data:
                continue  # the section failed validation: that error is reported
            current = info.data[name].model_dump(mode="json", by_alias=True)
            for candidate in dim.bounds():
                data = copy.deepcopy(current)
                set_dotted(data, rest, candidate)
                try:
                    field.annotation.model_validate(data)
                except ValidationError as exc:
                    detail = "; ".join(f"{'.'.join(map(str, (section, *e['loc'])))}: {e['msg']}" for e in exc.errors())
                    raise ValueError(f"space key {key!r}: the value {candidate!r} is refused: {detail}") from None
        return value

    def as_dict(self) -> dict[str, Any]:
        """The params as plain data, with the section names used in ``params.yaml``."""
        return self.model_dump(mode="json", by_alias=True)


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` (``train.lr0``) of nested params data.

    Raises:
        KeyError: When a part of ``key`` is missing.
    """
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at a dotted ``key`` of nested params data, creating sections as needed."""
    *sections, last = key.split(".")
    for part in sections:
        data = data.setdefault(part, {})
    data[last] = value


def did_you_mean(word: str, known: list[str]) -> str:
    """``"; did you mean 'x'?"`` when ``word`` is close to one of ``known``, else ``""``.

    Args:
        word: What the user wrote.
        known: What they could have meant.
    """
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """``"; did you mean 'x'?"`` for an unknown key that is close to a known one of its section."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:  # down to the section that holds the unknown key
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    return did_you_mean(str(loc[-1]), [f.alias or name for name, f in model.model_fields.items()])


def _first_interpolation(data: Any, where: tuple[str, ...]) -> tuple[str, str] | None:
    """The first dotted key (list items by index) whose value or name holds ``${``, with that text."""
    if isinstance(data, dict):
        for name, value in data.items():
            key = (*where, str(name))
            if INTERPOLATION in str(name):
                return ".".join(key), str(name)
            found = _first_interpolation(value, key)
            if found:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _first_interpolation(value, (*where, str(index)))
            if found:
                return found
    elif isinstance(data, str) and INTERPOLATION in data:
        return ".".join(where), data
    return None


def parse_params(data: Any, source: Path | str = DEFAULT_PARAMS) -> Params:
    """Validate already-loaded params data.

    Args:
        data: The mapping read from ``params.yaml``.
        source: Where it came from, for error messages.

    Returns:
        The validated params.

    Raises:
        ConfigError: When a key is unknown, a value is invalid or holds an interpolation (``${``);
            names the key and the file.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", path=source)
    interpolated = _first_interpolation(data, ())
    if interpolated is not None:
        key, value = interpolated
        raise ConfigError(
            f"'{key}' holds {value!r}: '${{' starts an interpolation, which DVC resolves through OmegaConf when "
            "it rewrites this file (dvc exp run --set-param, every tuning trial), e.g. ${oc.env:...} copies an "
            "environment variable (a secret) into params.yaml and the experiment's commit; an escaped \\${ comes "
            "back unescaped after one such rewrite, so '${' may not appear at all",
            path=source,
            key=key,
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = []
        first_key = None
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, KeyedValueError):
                key = cause.key
            first_key = first_key or key
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'{_suggestion(err['loc'])}")
            else:
                problems.append(f"'{key}': {err['msg']}")
        raise ConfigError("; ".join(problems), path=source, key=first_key) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: The params file.

    Returns:
        The validated params.

    Raises:
        ConfigError: When the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("params file not found", path=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    return parse_params(data, source=path)
