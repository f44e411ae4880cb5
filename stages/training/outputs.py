"""What a finished training run becomes: the stage's outputs, read from Ultralytics' run folder.

Global rank 0 writes the run folder wherever training ran (``results.csv``, ``args.yaml``,
``weights/best.pt``, and the trainer's ``epoch_stats.csv``, ``recipe.json`` and ``final_eval.json``);
this module turns it into ``models/best.pt``, ``models/train/``, the per-epoch curves, the
learning-rate curves, and the numbers of the training summary.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from stages.core.common import read_json, write_text
from stages.core.errors import TrainingError

STAGE = "train"
RUN_RECORD = ("results.csv", "args.yaml")  # what of Ultralytics' run folder becomes the train_dir output
# Written by global rank 0 into the run folder (stages.training.trainer). Named here, where they are
# read, so that publishing a run needs neither torch nor Ultralytics.
EPOCH_STATS = "epoch_stats.csv"  # per-epoch throughput, data-loader wait, peak GPU memory
RECIPE = "recipe.json"  # the recipe actually used
FINAL_EVAL = "final_eval.json"  # how many images the final validation saw

# Ultralytics results.csv columns -> names used in metrics/train.json and the curves file.
_COLUMNS = {
    "epoch": "epoch",
    "time": "time_s",
    "train/box_loss": "train_box_loss",
    "train/cls_loss": "train_cls_loss",
    "train/dfl_loss": "train_dfl_loss",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "val/box_loss": "val_box_loss",
    "val/cls_loss": "val_cls_loss",
    "val/dfl_loss": "val_dfl_loss",
}


class OutputPaths(Protocol):
    """Where the stage's outputs go (``TrainConfig`` has these)."""

    @property
    def best(self) -> Path:
        """``models/best.pt``."""

    @property
    def run_dir(self) -> Path:
        """The run record folder (``models/train/``)."""

    @property
    def curves(self) -> Path:
        """The per-epoch curves (a DVC plot)."""

    @property
    def lr_curves(self) -> Path:
        """The learning rate per epoch and schedule (a DVC plot)."""


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """Rows of Ultralytics' ``results.csv`` with our column names (unknown columns keep theirs)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                name = _COLUMNS.get(key.strip(), re.sub(r"[^0-9a-zA-Z]+", "_", key.strip()).strip("_"))
                row[name] = float(value)
            rows.append(row)
    return rows


def write_curves(rows: list[dict[str, float]], path: Path) -> None:
    """Write the per-epoch curves as CSV for ``dvc plots``."""
    if not rows:
        raise TrainingError("training produced no per-epoch results", stage=STAGE, path=path)
    header = list(rows[0])
    lines = [",".join(header)]
    lines += [",".join(f"{row[k]:.6g}" if k != "epoch" else str(int(row[k])) for k in header) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def lr_rows(rows: list[dict[str, float]]) -> list[dict[str, object]]:
    """The learning rate per epoch of each distinct schedule, one row per epoch and schedule.

    Ultralytics logs the rate of every optimizer parameter group (``lr/pg0``, ``lr/pg1``, ...), and
    several groups follow one schedule: the BatchNorm weights always share the conv weights' (they differ
    in weight decay only), and MuSGD adds its own groups. A schedule is real when no lower group has
    the same rate at every epoch; it is named by every group that follows it, e.g. ``pg0+pg1``.
    """
    columns = sorted((k for k in rows[0] if re.fullmatch(r"lr_pg\d+", k)), key=lambda k: int(k[len("lr_pg") :]))
    schedules: dict[tuple[str, ...], list[str]] = {}
    for column in columns:
        schedules.setdefault(tuple(f"{row[column]:.6g}" for row in rows), []).append(column.removeprefix("lr_"))
    return [
        {"epoch": int(row["epoch"]), "group": "+".join(groups), "lr": f"{row['lr_' + groups[0]]:.6g}"}
        for groups in schedules.values()
        for row in rows
    ]


def publish(run_dir: Path, cfg: OutputPaths) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Copy the finished run's weights and record into the stage's outputs.

    Args:
        run_dir: Ultralytics' run folder of the finished run.
        cfg: Where the outputs go.

    Returns:
        The per-epoch rows of ``results.csv`` and of the throughput record.
    """
    best = run_dir / "weights" / "best.pt"
    results_csv = run_dir / "results.csv"
    if not best.is_file():
        raise TrainingError("Ultralytics finished without writing best.pt", stage=STAGE, path=best)
    if not results_csv.is_file():
        raise TrainingError("Ultralytics finished without writing results.csv", stage=STAGE, path=results_csv)
    rows = read_results_csv(results_csv)
    stats = read_results_csv(run_dir / EPOCH_STATS) if (run_dir / EPOCH_STATS).is_file() else []
    by_epoch = {int(r["epoch"]): r for r in stats}
    merged = [{**row, **{k: v for k, v in by_epoch.get(int(row["epoch"]), {}).items() if k != "epoch"}} for row in rows]
    write_curves(merged, cfg.curves)
    lr = lr_rows(rows)
    write_text(cfg.lr_curves, "epoch,group,lr\n" + "".join(f"{r['epoch']},{r['group']},{r['lr']}\n" for r in lr))
    # Written aside and renamed: the previous outputs stay whole until the new ones are, and a
    # previous file restored as a link to DVC's cache (stages.core.recorded_outputs) is replaced, never
    # written through (that would change the cache object).
    cfg.best.parent.mkdir(parents=True, exist_ok=True)
    partial = cfg.best.parent / f".{cfg.best.name}.partial"
    try:
        shutil.copyfile(best, partial)
        partial.replace(cfg.best)
    finally:
        partial.unlink(missing_ok=True)
    record = cfg.run_dir.parent / f".{cfg.run_dir.name}.partial"
    shutil.rmtree(record, ignore_errors=True)
    try:
        record.mkdir(parents=True)
        for name in RUN_RECORD:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, record / name)
        if cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)
        record.rename(cfg.run_dir)
    finally:
        shutil.rmtree(record, ignore_errors=True)
    return rows, stats


def run_summary(run_dir: Path, rows: list[dict[str, float]], stats: list[dict[str, float]]) -> dict[str, Any]:
    """The training summary's fields that the run folder holds (written by global rank 0, wherever training ran).

    Args:
        run_dir: Ultralytics' run folder of the finished run.
        rows: Its per-epoch rows of ``results.csv`` (``read_results_csv``).
        stats: Its per-epoch throughput rows (``epoch_stats.csv``), empty when there are none.

    Returns:
        The fields of the ``train`` stage's result other than the model, the starts and the duration.
    """
    recipe = read_json(run_dir / RECIPE, stage=STAGE)
    best_row = max(rows, key=lambda r: 0.1 * r.get("map50", 0.0) + 0.9 * r.get("map50_95", 0.0))
    return {
        "device": recipe["text"]["device"],
        "amp": recipe["text"]["amp"] == "on",
        "backend": recipe["text"]["backend"],
        "optimizer": recipe["text"]["optimizer"],
        "lr_rule": recipe["text"]["lr_rule"],
        "sync_bn": recipe["text"]["sync_bn"] == "on",
        "trainer": recipe["text"].get("trainer", "ultralytics"),
        "epochs_run": len(rows),
        "final_val_images": read_json(run_dir / FINAL_EVAL, stage=STAGE)["images"],
        "best_epoch": int(best_row["epoch"]) if "epoch" in best_row else None,
        "final": {k: v for k, v in rows[-1].items() if k != "epoch"},
        "best": {k: v for k, v in best_row.items() if k != "epoch"},
        "distributed": recipe["distributed"],
        "recipe": recipe["recipe"],
        "throughput": {
            "images_per_s": stats[-1]["images_per_s"] if stats else 0.0,
            "dataloader_wait_share": stats[-1]["dataloader_wait_share"] if stats else 0.0,
            "gpu_mem_peak_gib": max((s["gpu_mem_peak_gib"] for s in stats), default=0.0),
        },
        "epochs": stats,
    }
