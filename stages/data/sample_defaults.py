"""The values of ``params.yaml`` chosen for the generated sample, and which of them a workspace on other
data still has: what ``validate`` warns about and ``report`` notes on the model card.

Which data is the sample: its class names, in order, are exactly the generator's
(``stages.data.sample_data.CLASSES``). Class names rather than the data version, because the
sample's DVC hash changes with the generator's arguments (image count, size, seed) while its
classes never do; and a real dataset named exactly square, disc, triangle in that order is not
one a person brings. Nothing here fails a stage: these are reminders, not errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.config import Params, get_dotted
from stages.data.sample_data import CLASSES


class SampleDefault(BaseModel):
    """One params key still at the value made for the sample, and what to do about it."""

    model_config = ConfigDict(frozen=True)

    key: str
    value: Any
    advice: str


# Dotted key -> (the value params.yaml ships with for the sample, why it does not fit other data).
# tests/unit/test_sample_defaults.py checks these are the committed params.yaml's values.
SAMPLE_MADE: dict[str, tuple[Any, str]] = {
    "train.model": (
        "yolo11n.yaml",
        "trains from scratch; start from pretrained weights: make weights MODEL=yolo11n, "
        "then train.model: weights/yolo11n.pt",
    ),
    "evaluate.min_map50": (0.1, "a gate set for the toy shapes; set the mAP50 your use needs"),
    "evaluate.min_map50_95": (0.05, "a gate set for the toy shapes; set the mAP50-95 your use needs"),
    "report.title": ("YOLO detector (sample shapes dataset)", "the model card title names the sample; name your data"),
}
# The keys whose values the check reads: dvc.yaml lists them as params of validate, so a change re-runs it.
KEYS = tuple(SAMPLE_MADE)


def is_sample(names: Sequence[str]) -> bool:
    """Whether a dataset with these class names (in id order) is the generated sample."""
    return tuple(names) == CLASSES


def current_values(params: Params) -> dict[str, Any]:
    """The values of :data:`KEYS` in ``params`` (what a stage's config carries to :func:`in_place`)."""
    data = params.as_dict()
    return {key: get_dotted(data, key) for key in KEYS}


def in_place(names: Sequence[str], values: dict[str, Any]) -> list[SampleDefault]:
    """The sample-made values still in ``values`` when the data is not the sample.

    Args:
        names: The dataset's class names in id order.
        values: Dotted key -> current value, for every key of :data:`KEYS`.

    Returns:
        One entry per key still at the sample's value; empty for the sample itself.
    """
    if is_sample(names):
        return []
    return [
        SampleDefault(key=key, value=values[key], advice=advice)
        for key, (sample_value, advice) in SAMPLE_MADE.items()
        if values.get(key) == sample_value
    ]


def lines(found: Sequence[SampleDefault]) -> list[str]:
    """One markdown list item per entry: the key, its value, the advice."""
    return [f"- `{d.key}: {d.value}`: {d.advice}" for d in found]


def summary_section(found: Sequence[SampleDefault]) -> str:
    """The section ``validate`` adds to its summary (empty when nothing is found)."""
    if not found:
        return ""
    head = [
        "### Defaults made for the sample",
        "",
        "This dataset is not the generated sample, but params.yaml still holds values chosen for it "
        "(README: Your own data):",
        "",
    ]
    return "\n".join([*head, *lines(found), ""])


def card_note(found: Sequence[SampleDefault]) -> str:
    """The note ``report`` puts at the top of the model card (empty when nothing is found)."""
    if not found:
        return ""
    keys = ", ".join(f"`{d.key}`" for d in found)
    return f"> **Note:** params made for the sample dataset are still in place: {keys} (README: Your own data).\n"
