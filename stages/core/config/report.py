"""The ``report`` section (``stages/report.py``): the model card."""

from __future__ import annotations

from pydantic import Field

from stages.core.config.base import _Section


class ReportParams(_Section):
    """Model card contents."""

    title: str = "YOLO detector"
    # The card's PR chart draws this many classes (those with the most validation boxes), the rest go
    # in a table under it: 80 curves and their legend cannot be read. At most 19: with 'all classes'
    # that is the 20 colours of the chart's scheme, none used twice.
    top_classes: int = Field(10, ge=1, le=19)
