"""The model card's sections: the data version in words, the benchmark's two records as one, the
latency and deploy tables, the INT8 note, and the one-line cells of the card's headline table.

Each takes the records the stages wrote (already read) and returns markdown lines or text; the card
(:mod:`stages.reporting.card_markdown`) puts them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.core.data_version import recorded_data_version


def data_version(workspace: Path, dataset: str) -> str:
    """DVC's hash of the dataset this pipeline ran on, described for a reader."""
    found = recorded_data_version(workspace, dataset)
    if found is None:
        return "unknown: the dataset is not tracked by DVC and the pipeline did not run through DVC"
    return f"{found.md5} ({found.nfiles} files, {found.size} bytes; from {found.source})"


def fmt(value: Any, digits: int = 4) -> str:
    """A number of the card: ``digits`` decimals for a float, a dash for ``None``."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# reports/train.json's "trainer" (train.backend) in words: what ran the training loop.
TRAINERS = {
    "ultralytics": "Ultralytics' trainer",
    "lightning": "Lightning (Ultralytics' model, data, loss and validation)",
}


def trainer_text(train_facts: dict[str, Any]) -> str:
    """``", trained by <who>"`` from ``reports/train.json``, or nothing where the record does not say."""
    trainer = train_facts.get("trainer")
    return f", trained by {TRAINERS.get(trainer, trainer)}" if trainer else ""


def merged_benchmark(numbers: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """``metrics/benchmark.json`` and ``reports/benchmark.json`` as one record per backend, with the skips."""
    facts = text.get("backends", {})
    backends = {
        name: {"backend": name, **row, **facts.get(name, {})} for name, row in numbers.get("backends", {}).items()
    }
    return {"backends": backends, "skipped": text.get("skipped", {})}


def latency_table(benchmark: dict[str, Any]) -> list[str]:
    """Markdown rows of the latency table, and a warning under it for every row that is not stable."""
    columns = ["backend", "provider", "device", "precision", "threads", "batch", "imgsz"]
    columns += ["p50 ms", "p90 ms", "end-to-end ms", "cv", "stable", "img/s"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    unstable = []
    for r in benchmark.get("backends", {}).values():
        lat = r["latency_ms"]
        lines.append(
            f"| {r['backend']} | {r['provider']} | {r['device']} | {r['precision']} | {fmt(r.get('threads'))} | "
            f"{r['batch']} | {r['imgsz']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {fmt(r.get('end_to_end_ms'), 2)} | "
            f"{r['cv']:.2f} | {'yes' if r['stable'] else '**NO**'} | {r['throughput_ips']:.1f} |"
        )
        if not r["stable"]:
            unstable.append(r["backend"])
    if unstable:
        lines += [
            "",
            f"**Not stable:** {', '.join(unstable)}: the rounds disagree (cv above 0.10, or a p50 over 3 "
            "times the fastest call); the machine was busy. Rerun before comparing.",
        ]
    return lines


def int8_note(env: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """The CPU each INT8 artifact was built for and how that was chosen, and whether this CPU is one.

    An artifact built for VNNI CPUs (8-bit weights) loses accuracy on a CPU without VNNI, whose 16-bit
    pair sums saturate: the card says so when the machine it is written on is such a CPU.
    """
    built = {name: f for name, f in facts.items() if f["precision"] == "int8"}
    if not built:
        return []
    found = env.get("cpu_int8") or []
    lines = []
    for name, f in built.items():
        cpu = f.get("int8_cpu")
        if not cpu:
            continue
        weights = "7-bit weights, which cannot saturate" if cpu["reduce_range"] else "full 8-bit weights"
        flags = ", ".join(cpu["machine_int8_flags"]) or "none"
        lines.append(
            f"{name} is built for **{cpu['target']}** CPUs ({weights}; chosen by {cpu['chosen_by']}; "
            f"built on {cpu['machine']}, INT8 flags: {flags})."
        )
        if cpu["target"] == "vnni" and not found:
            lines.append(
                f"**This CPU has no VNNI:** {name}'s 8-bit products can saturate here and lose accuracy; "
                "build it with deploy.int8.target_cpu: no-vnni for such CPUs."
            )
    if found:
        lines.append(f"This CPU has {', '.join(found)}: INT8 convolutions run on integer dot-product instructions.")
    else:
        lines.append(
            "This CPU reports no integer dot-product extension (VNNI, AMX, dot-product): INT8 is not expected "
            "to be faster here; the latency table says what it measured."
        )
    return [*(f"{line}\n" for line in lines[:-1]), lines[-1], ""]


def deploy_table(metrics: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Markdown rows of the deploy artifacts: accuracy against the PyTorch model, size, and the verdict."""
    if not facts:
        return ["Nothing was built: nothing was exported."]
    reference = metrics["pytorch"]
    lines = [
        f"PyTorch model, same preprocessing, NMS and mAP code: mAP50 {reference['map50']:.4f}, "
        f"mAP50-95 {reference['map50_95']:.4f}.",
        "",
        "| artifact | precision | runtime | mAP50 | mAP50-95 | drop (points) | size MB | deployable | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in facts.items():
        m = metrics[name]
        drop = m.get("drop_map50_95")
        share = m.get("integer_conv_share")
        lines.append(
            f"| {name} | {f['precision']} | {f.get('provider') or '—'} | "
            f"{fmt(m.get('map50'))} | {fmt(m.get('map50_95'))} | "
            f"{'—' if drop is None else f'{drop * 100:+.2f}'} | {fmt(m.get('size_mb'), 2)} | "
            f"{'yes' if f['deployable'] else '**no**'} | {f['reason']}"
            f"{'; ' + f['scheme'] if f.get('scheme') else ''}"
            f"{'' if share is None else f'; {share:.0%} of convolutions run as integer ops'} |"
        )
    return lines


def engine_cell(engine: dict[str, Any]) -> str:
    """The TensorRT engine in one cell: built or why not, and its accuracy verdict."""
    if engine["status"] != "built":
        return f"{engine['status']}: {engine.get('reason')}"
    verdict = "deployable" if engine.get("deployable") else "**not deployable** (over deploy.max_drop)"
    return (
        f"built, {engine['precision']}, TensorRT {engine['tensorrt']} on {engine['gpu']}; mAP50-95 "
        f"{fmt(engine.get('map50_95'))}, a drop of {100 * (engine.get('drop_map50_95') or 0):.2f} points: {verdict}"
    )


def parity_cell(parity: dict[str, Any] | None) -> str:
    """The export's parity with PyTorch in one cell."""
    if parity is None:
        return "not measured: nothing was exported"
    return (
        f"{'passed' if parity['passed'] else 'FAILED'} (max Δbox {parity['max_abs_diff_boxes_px']:.2e} px, "
        f"max Δscore {parity['max_abs_diff_scores']:.2e})"
    )


def export_text(export: dict[str, Any]) -> str:
    """The ONNX export in a sentence: opset, size, batch, and its parity with PyTorch."""
    if not export.get("exported"):
        return "Nothing was exported: the model failed the evaluation gate, so it is not deployable."
    parity = export["parity"]
    return (
        f"ONNX opset {export['opset']}, {export['size_mb']} MB, batch {export['batch']}"
        f"{' (dynamic)' if export['dynamic'] else ''}; parity measured with {export['onnxruntime_provider']} "
        f"against PyTorch on {parity['images']} validation images: max |Δ| boxes "
        f"{parity['max_abs_diff_boxes_px']:.3g} px, scores {parity['max_abs_diff_scores']:.3g}, "
        f"top-1 agreement {100 * parity['top_class_agreement']:.0f}%."
    )
