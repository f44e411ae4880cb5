"""The validate summary names what differs between problems that share one file (a class absent from train)."""

from __future__ import annotations

from stages.data.validation.images import ImageRecord
from stages.data.validation.report import ValidateResult, render_summary
from stages.data.validation.tally import Tally


def _record(split: str, image: str, classes: list[int]) -> ImageRecord:
    return ImageRecord(
        split=split,
        image=image,
        digest=image,
        boxes=[(c, 0.5, 0.5, 0.2, 0.2) for c in classes],
        width=64,
        height=64,
        problems=[],
    )


def test_class_absent_from_train_names_each_class_not_the_file_again():
    names = ["person", "bicycle", "car", "traffic light", "dog", "cat", "bus"]
    tally = Tally(names)
    tally.add(_record("train", "a.jpg", [0]))
    tally.add(_record("val", "b.jpg", [1]))
    problems = tally.dataset_problems("data/prepared/data.yaml")
    absent = [p for p in problems if p.code == "class_absent_from_train"]
    assert [p.message for p in absent][:2] == [
        "class 1 'bicycle' has no box in the train split",
        "class 2 'car' has no box in the train split",
    ]
    assert len(absent) == 6
    result = ValidateResult(
        ok=True,
        images=2,
        errors=0,
        warnings=len(problems),
        problems=problems,
        splits=dict(tally.split_counts),
        instances_per_class=tally.instances_per_class(),
        box_size_px={},
    )
    row = next(line for line in render_summary(result, examples=5).splitlines() if "class_absent_from_train" in line)
    assert row.count("data/prepared/data.yaml") == 1
    for cls, name in enumerate(names[1:6], start=1):
        assert f"class {cls} '{name}'" in row
    assert row.endswith("and 1 more |")
