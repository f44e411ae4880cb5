"""The cross-file checks of ``validate``, on the per-image records: duplicate images, empty splits,
classes missing from train; and the counts the report shows (images per split, boxes per class, box sizes).

Only the records' small fields are kept (a digest and path per image, two floats per box), never an image.
"""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict

from stages.data.validation.images import ImageRecord
from stages.data.validation.problems import Problem, problem


class Tally:
    """What the records of the whole dataset add up to, fed one record at a time."""

    def __init__(self, names: list[str]) -> None:
        """Start an empty tally.

        Args:
            names: The class names, indexed by class id.
        """
        self.names = names
        self.split_counts: Counter[str] = Counter()
        self.instances: dict[str, Counter[str]] = defaultdict(Counter)
        self.first_seen: dict[str, tuple[str, str]] = {}  # image digest -> (split, file) of its first occurrence
        self.widths, self.heights = array("f"), array("f")

    @property
    def images(self) -> int:
        """Images counted so far, over all splits."""
        return sum(self.split_counts.values())

    def add(self, record: ImageRecord) -> list[Problem]:
        """Count one image and its boxes.

        Args:
            record: The image's record.

        Returns:
            The image's duplicate problem, if an identical image was met before (in this split or another).
        """
        problems = []
        self.split_counts[record.split] += 1
        if record.digest:
            first = self.first_seen.setdefault(record.digest, (record.split, record.image))
            if first[1] != record.image:
                if first[0] != record.split:
                    problems.append(
                        problem(
                            "image_duplicate_across_splits",
                            record.image,
                            f"identical to {first[1]} in split '{first[0]}' (train/val leakage)",
                        )
                    )
                else:
                    problems.append(
                        problem("image_duplicate", record.image, f"identical to {first[1]} in the same split")
                    )
        for cls, _cx, _cy, w, h in record.boxes:
            self.instances[record.split][self.names[cls]] += 1
            if record.width and record.height:
                self.widths.append(w * record.width)
                self.heights.append(h * record.height)
        return problems

    def dataset_problems(self, file: str) -> list[Problem]:
        """The problems of the dataset as a whole: no images, an empty train or val split, a class absent from train.

        Args:
            file: The file they are reported against (the prepared ``data.yaml``, as shown).

        Returns:
            The problems.
        """
        problems = []
        if self.images == 0:
            return [problem("dataset_empty", file, "the dataset has no images")]
        for split in ("train", "val"):
            if self.split_counts[split] == 0:
                problems.append(problem("split_empty", file, f"split '{split}' has no images"))
        for cls, name in enumerate(self.names):
            if self.split_counts["train"] and self.instances["train"][name] == 0:
                # The class (id and name) is what the user looks for: every one of these has the same file.
                problems.append(
                    problem("class_absent_from_train", file, f"class {cls} '{name}' has no box in the train split")
                )
        return problems

    def instances_per_class(self) -> dict[str, dict[str, int]]:
        """Boxes per class, per split (every class named, in class order)."""
        return {s: {n: self.instances[s][n] for n in self.names} for s in self.split_counts}

    def size_summary(self) -> dict[str, float]:
        """Box widths and heights in pixels (boxes of images whose size is known): count, min, median, max."""
        if not self.widths:
            return {}
        ws, hs = sorted(self.widths), sorted(self.heights)
        mid = len(ws) // 2
        return {
            "boxes": float(len(ws)),
            "min_width": round(ws[0], 2),
            "median_width": round(ws[mid], 2),
            "max_width": round(ws[-1], 2),
            "min_height": round(hs[0], 2),
            "median_height": round(hs[mid], 2),
            "max_height": round(hs[-1], 2),
        }
