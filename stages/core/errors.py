"""Typed errors of the pipeline.

Every error names what is at fault (a stage, a file, a params key) so that the message printed by a
stage's CLI is enough to act on. Stage CLIs turn these into a non-zero exit; nothing else catches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class PipelineError(Exception):
    """Base class of every error a stage raises on purpose.

    Args:
        message: What went wrong and what to do about it.
        stage: The stage that failed, when known.
        path: The file at fault, when there is one.
        key: The params key at fault, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        path: Path | str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.stage = stage
        self.path = Path(path) if path is not None else None
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.stage:
            where.append(f"stage '{self.stage}'")
        if self.path is not None:
            where.append(f"file '{self.path}'")
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = f"[{', '.join(where)}] " if where else ""
        return f"{prefix}{self.message}"


class ConfigError(PipelineError):
    """``params.yaml`` (or another configuration file) is missing, malformed or holds a bad value."""


class DatasetError(PipelineError):
    """The input dataset cannot be read or converted."""


class ValidationFailed(PipelineError):
    """The dataset has problems of error severity; carries how many."""

    def __init__(self, message: str, *, errors: int, stage: str = "validate", path: Path | str | None = None):
        self.errors = errors
        super().__init__(message, stage=stage, path=path)


class TrainingError(PipelineError):
    """Ultralytics training did not produce the expected weights or results."""


class GateFailed(PipelineError):
    """The evaluated model misses one or more gates; carries every failed check's description."""

    def __init__(self, failed: Sequence[str], *, path: Path | str | None = None) -> None:
        self.failed = list(failed)
        message = "quality gate failed: " + "; ".join(self.failed)
        super().__init__(message, stage="evaluate", path=path)


class StaleResult(PipelineError):
    """A recorded result was made with other params than ``params.yaml`` holds now (run its stage again)."""


class ExportError(PipelineError):
    """ONNX export failed, or the exported model disagrees with PyTorch beyond the tolerance."""


class EngineUnavailable(PipelineError):
    """A TensorRT engine was required but cannot be built on this machine."""


class BackendUnavailable(PipelineError):
    """A benchmark backend that was asked for explicitly cannot run here."""


class TuneError(PipelineError):
    """A hyper-parameter study cannot start or go on (``flows/tuning/``): a changed study, a name clash."""


class StageFailed(PipelineError):
    """A stage run through DVC (for example from the Prefect flow) failed.

    Args:
        message: The stage's own error lines, or the end of its output.
        stage: The stage.
        exit_code: The stage command's exit code when DVC reported one.
        retryable: Whether running it again can help (a crash or a kill, not a refusal).
    """

    def __init__(self, message: str, *, stage: str, exit_code: int | None = None, retryable: bool = False) -> None:
        self.exit_code = exit_code
        self.retryable = retryable
        super().__init__(message, stage=stage)


class RemoteError(PipelineError):
    """The DVC remote cannot be used: none set, unreachable, credentials refused, or a push that did not complete.

    Args:
        message: What failed and what to do about it.
        remote: The DVC remote's name.
        retryable: Whether pushing again can help (a dropped connection, not refused credentials).
    """

    def __init__(self, message: str, *, remote: str | None, retryable: bool = False) -> None:
        self.remote = remote
        self.retryable = retryable
        super().__init__(message, stage="push")


class WeightsError(PipelineError):
    """Pretrained weights could not be fetched (``python -m stages.data.weights``): host, HTTP, size."""


class WeightsHashMismatch(WeightsError):
    """Fetched (or already present) weights do not have the pinned SHA-256; carries both digests."""

    def __init__(self, message: str, *, expected: str, actual: str, path: Path | str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{message}: expected sha256 {expected}, got {actual}", path=path)
