"""The ``tune`` section (``flows/tuning/``): the hyper-parameter search and its space."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stages.core.config.base import _Section, relative_inside_workspace


class SearchDim(_Section):
    """One dimension of the search space: a range of numbers or a list of choices for one params key."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = Field(None, description="float/int: smallest value")
    high: int | float | None = Field(None, description="float/int: largest value (included)")
    log: bool = Field(False, description="float/int: sample on a log scale (low > 0)")
    step: int | float | None = Field(None, description="float/int: only low + k * step (not with log)")
    choices: list[bool | int | float | str | None] | None = Field(None, description="categorical: the values")

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes choices only, not low, high, log or step")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("lists a choice twice")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low and high, not choices")
        if self.low is None or self.high is None or isinstance(self.low, bool) or isinstance(self.high, bool):
            raise ValueError(f"{self.type} needs numbers low and high")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("int needs whole numbers low, high and step")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        return self

    def bounds(self) -> list[Any]:
        """The values checked against the params model: both ends of a range, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


class TuneMetricParams(_Section):
    """The number a study optimizes: a dotted key in a metrics file the tuned stages write."""

    file: str = Field("metrics/evaluate.json", description="relative to the workspace")
    key: str = Field("map50_95", min_length=1, description="dotted key in that file, e.g. per_class.disc.ap50")

    @field_validator("file")
    @classmethod
    def _relative_inside_workspace(cls, value: str) -> str:
        return relative_inside_workspace(value)


STORAGE_SCHEMES = ("sqlite", "journal", "postgresql", "mysql")


def storage_url_problem(url: str) -> str:
    """Why ``url`` cannot be a study's storage (``tune.storage``), or ``""`` when it can.

    A password in the URL is refused: ``params.yaml`` is committed and every experiment carries it.
    PostgreSQL reads it from the environment instead (``PGPASSWORD`` or ``PGPASSFILE``, libpq's own).
    """
    if not url:
        return ""
    scheme, sep, rest = url.partition(":")
    base = scheme.split("+", 1)[0]
    if not sep or base not in STORAGE_SCHEMES:
        return f"storage {url!r} is not sqlite:///FILE, journal:FILE or postgresql+DRIVER://USER@HOST/DB"
    if base == "journal":
        return "" if rest.strip("/") else "journal: needs a file, e.g. journal:.cache/tune/study.log"
    if base == "sqlite":
        return "" if rest.startswith("///") and rest[3:] else "sqlite needs a file: sqlite:///FILE"
    netloc = rest[2:].split("/", 1)[0] if rest.startswith("//") else ""
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo:
        return (
            "storage URL holds a password: remove it and give it in the environment "
            "(PGPASSWORD or a PGPASSFILE for PostgreSQL)"
        )
    return "" if netloc else f"{base} needs a server: {base}+DRIVER://USER@HOST[:PORT]/DB"


class TuneParams(_Section):
    """Hyper-parameter search (``python -m flows.tune``): an Optuna study, one ``dvc exp run`` per trial.

    Read by ``flows/tuning/`` only; no DVC stage depends on it, so changing the search space
    retrains nothing.
    """

    study: str = Field(
        "yolo-tune",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="study name: the same name continues the same study; trials are experiments <study>-<n>",
    )
    seed: int = Field(0, description="seed of the sampler (offset by the trials already run, when resuming)")
    sampler: Literal["tpe"] = "tpe"
    target: str = Field(
        "evaluate", description="the stage each trial reproduces, with every stage before it; empty: all of them"
    )
    metric: TuneMetricParams = Field(default_factory=TuneMetricParams)
    direction: Literal["maximize", "minimize"] = "maximize"
    trial_timeout_s: int = Field(0, ge=0, description="kill a trial's dvc exp run after this long; 0: no limit")
    space: dict[str, SearchDim] = Field(
        default_factory=dict, description="dotted params key (train.lr0) -> its range or choices"
    )

    workers: int = Field(1, ge=1, description="trials run at a time; above 1 each runs in its own clone")
    storage: str = Field(
        "",
        description="Optuna storage: '' = <tune_studies>/<study>.db, sqlite:///FILE, journal:FILE or "
        "postgresql+psycopg2://USER@HOST/DB (password from the environment, never here)",
    )
    git_remote: str = Field("", description="git remote each trial's experiment is pushed to (dvc exp push); ''")

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        problem = storage_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("target")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        from stages import PIPELINE

        if value and value not in PIPELINE:
            raise ValueError(f"unknown stage {value!r}; stages are {list(PIPELINE)}")
        return value

    @field_validator("space")
    @classmethod
    def _keys_name_params(cls, value: dict[str, SearchDim]) -> dict[str, SearchDim]:
        # The keys name values of the other sections, which the root model composes with this one:
        # it is read when params are validated, not when this module is imported.
        from stages.core.config.root import _leaf_annotation, _not_a_params_key

        for key, dim in value.items():
            problem = _not_a_params_key(key)
            if problem:
                raise ValueError(f"space key {key!r} {problem}")
            if dim.type == "float" and _leaf_annotation(key) in (int, "int"):
                raise ValueError(f"space key {key!r} holds a whole number: use type int, not float")
        return value
