"""The ``orchestration`` section (``flows/pipeline.py``): retries, timeouts and the workspace lock."""

from __future__ import annotations

from pydantic import Field, field_validator

from stages.core.config.base import _Section


class OrchestrationParams(_Section):
    """Prefect flow behaviour: retries, timeouts and the workspace lock."""

    train_retries: int = Field(2, ge=0, description="retries of a crashed training; each resumes from last.pt")
    retry_delay_s: int = Field(10, ge=0)
    stage_timeout_s: dict[str, int] = Field(
        default_factory=lambda: {"train": 86400, "default": 3600},
        description="per-stage timeout in seconds; 'default' for the others",
    )
    lock_timeout_s: int = Field(60, ge=0, description="how long a second run waits for the workspace")

    @field_validator("stage_timeout_s")
    @classmethod
    def _known_stages(cls, value: dict[str, int]) -> dict[str, int]:
        from stages import PIPELINE

        unknown = set(value) - {*PIPELINE, "default"}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        if "default" not in value:
            raise ValueError("needs a 'default' entry")
        return value
