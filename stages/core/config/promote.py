"""The ``promote`` section (``stages/promote.py``): when a trained model replaces production."""

from __future__ import annotations

from pydantic import Field

from stages.core.config.base import _Section


class PromoteParams(_Section):
    """When a trained model replaces the production one."""

    max_map50_95_drop: float = Field(
        0.0, ge=0.0, le=1.0, description="largest mAP50-95 drop against production that still promotes"
    )
    version_with_dvc: bool = Field(True, description="dvc add the production folder after promoting")
    commit: bool = Field(
        True,
        description="git commit the production pointer and tag it production-v<N>, and <artifact>@v<N>.0.0 and "
        "<artifact>#prod#<k> where dvc.yaml declares it (in a git repository)",
    )
