"""What every params section shares: the frozen, strict base model and the checks two sections use."""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    """Base of every params section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def relative_inside_workspace(value: str) -> str:
    """``value`` when it is a relative path that stays inside the workspace.

    Raises:
        ValueError: For an absolute path, one with ``..``, or an empty one.
    """
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"must be a relative path inside the workspace, got {value!r}")
    return value


class KeyedValueError(ValueError):
    """A refused value found by a check across keys, with the key at fault (the error names it)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)
