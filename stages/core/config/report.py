"""The ``report`` section (``stages/report.py``): the model card."""

from __future__ import annotations

from stages.core.config.base import _Section


class ReportParams(_Section):
    """Model card contents."""

    title: str = "YOLO detector"
