"""The ``paths`` section: every input and output location, relative to the workspace, kept apart."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pydantic import field_validator, model_validator

from stages.core.config.base import KeyedValueError, _Section, relative_inside_workspace
from stages.core.errors import ConfigError

# The entries of ``paths`` that stages only read; every other one is written (an output).
INPUT_KEYS = frozenset({"dataset", "weights"})
# What no output may be, hold or lie in, at the top of the workspace: DVC's and git's folders and the
# code and project files. An output there would be deleted or replaced by DVC or by promotion.
RESERVED = frozenset(
    {
        ".dvc",
        ".dvc-storage",  # the default local DVC remote (.dvc/config): every pushed version lives there
        ".git",
        ".github",
        ".ci",
        ".venv",
        ".dvcignore",
        ".gitignore",
        "dvc.yaml",
        "dvc.lock",
        "params.yaml",
        "pyproject.toml",
        "makefile",
        "readme.md",
        "prefect.yaml",
        "prefect.toml",
        "stages",
        "flows",
        "tests",
        "scripts",
        "benchmarks",
    }
)


def _parts(value: str) -> tuple[str, ...]:
    """The parts of a relative path, case-folded (a case-insensitive disk makes ``Data`` ``data``)."""
    return tuple(part.casefold() for part in PurePosixPath(value).parts)


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one of two paths is the other or lies inside it."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _reserved(parts: tuple[str, ...]) -> str:
    """Why an output at ``parts`` would destroy the project (``""`` when it would not)."""
    if parts and parts[0] in RESERVED:
        return f"lies in or is '{parts[0]}', which belongs to the project (DVC, git or the code)"
    return ""


class PathsParams(_Section):
    """Where every stage reads and writes, relative to the workspace root (the folder of ``dvc.yaml``)."""

    dataset: str = "data/dataset"
    prepared: str = "data/prepared"
    weights: str = "weights"
    environment: str = "reports/environment.json"
    validate_report: str = "reports/validate.json"
    validate_summary: str = "reports/validate.md"
    train_dir: str = "models/train"
    train_runs: str = ".cache/train-runs"
    model: str = "models/best.pt"
    train_metrics: str = "metrics/train.json"
    train_plot: str = "plots/train_curves.csv"
    lr_plot: str = "plots/lr.csv"
    train_report: str = "reports/train.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    quality_metrics: str = "metrics/quality.json"
    deploy_dir: str = "models/deploy"
    export_metrics: str = "metrics/export.json"
    export_report: str = "reports/export.json"
    deploy_metrics: str = "metrics/deploy.json"
    deploy_report: str = "reports/deploy.json"
    engine_dir: str = "models/engine"
    engine_metrics: str = "metrics/engine.json"
    engine_report: str = "reports/engine.json"
    engine_timing_cache: str = "models/tensorrt-cache"
    benchmark_metrics: str = "metrics/benchmark.json"
    deployment_metrics: str = "metrics/deployment.json"
    benchmark_report: str = "reports/benchmark.json"
    latency_plot: str = "plots/latency.csv"
    throughput_plot: str = "plots/throughput.csv"
    pr_curve_plot: str = "plots/pr_curve.csv"
    confusion_plot: str = "plots/confusion.csv"
    val_predictions_plot: str = "plots/val_predictions.png"
    model_card: str = "reports/model_card.md"
    model_card_html: str = "reports/model_card.html"
    production: str = "models/production"
    promotion_report: str = "reports/promotion.json"
    tune_report: str = "reports/tune.json"
    tune_studies: str = ".cache/tune"

    @field_validator("*")
    @classmethod
    def _relative_inside_workspace(cls, value: str) -> str:
        return relative_inside_workspace(value)

    @model_validator(mode="after")
    def _outputs_apart(self) -> PathsParams:
        # Outputs are replaced, renamed or deleted as a whole (DVC removes a stage's outputs before
        # running it, promotion swaps a folder): an output that is, holds or lies in another entry,
        # the dataset, DVC's or git's folder or the code would take that with it.
        entries = {name: _parts(value) for name, value in self}
        dataset = entries["dataset"]
        fields = type(self).model_fields
        # The keys changed from their defaults first: when two overlap, the changed one is at fault.
        outputs = sorted(
            (n for n in entries if n not in INPUT_KEYS), key=lambda n: getattr(self, n) == fields[n].default
        )
        for name in outputs:
            path = entries[name]
            if _overlap(path, dataset):
                where = "lies inside" if len(path) >= len(dataset) else "holds"
                raise KeyedValueError(
                    f"paths.{name}", f"paths.{name} ({getattr(self, name)}) {where} paths.dataset ({self.dataset})"
                )
            reserved = _reserved(path)
            if reserved:
                raise KeyedValueError(f"paths.{name}", f"paths.{name} ({getattr(self, name)}) {reserved}")
            for other, other_path in entries.items():
                if other != name and _overlap(path, other_path):
                    raise KeyedValueError(
                        f"paths.{name}",
                        f"paths.{name} ({getattr(self, name)}) overlaps paths.{other} ({getattr(self, other)}): "
                        "replacing one would delete the other",
                    )
        return self

    def resolve(self, name: str, root: Path) -> Path:
        """Absolute path of the entry ``name`` under the workspace ``root``, links followed.

        Raises:
            ConfigError: When ``name`` is an output and, once links are followed, lies outside
                ``root`` or in a place no output may be (``.dvc``, ``.git``, the code, the dataset).
        """
        path = (root / getattr(self, name)).resolve()
        if name in INPUT_KEYS:
            return path  # inputs are only read: a dataset linked in from a larger disk is fine
        workspace = root.resolve()
        key = f"paths.{name}"
        if not path.is_relative_to(workspace):
            raise ConfigError(
                f"{key} ({getattr(self, name)}) leads outside the workspace ({workspace}) through a link, "
                f"to {path}: outputs are replaced and deleted, so they must stay inside",
                key=key,
            )
        inside = _parts(path.relative_to(workspace).as_posix())
        reserved = _reserved(inside) if inside else "is the workspace itself"
        if not reserved and inside != _parts(getattr(self, name)):
            # A link followed: where it leads must keep apart from every other entry, too.
            reserved = next(
                (f"overlaps paths.{o} ({v})" for o, v in self if o != name and _overlap(inside, _parts(v))), ""
            )
        if not reserved:
            dataset = (root / self.dataset).resolve()
            if path == dataset or dataset in path.parents or path in dataset.parents:
                reserved = f"overlaps paths.dataset ({self.dataset}, {dataset})"
        if reserved:
            raise ConfigError(
                f"{key} ({getattr(self, name)}) leads through a link to {path}, which {reserved}", key=key
            )
        return path

    def onnx_model(self, root: Path) -> Path:
        """The exported ONNX model in ``deploy_dir`` (absent when a failed gate stopped the export)."""
        return self.resolve("deploy_dir", root) / "model.onnx"
