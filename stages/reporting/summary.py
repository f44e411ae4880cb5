"""The few numbers people compare across experiments: ``metrics/quality.json`` and
``metrics/deployment.json``.

``dvc exp show`` and ``dvc metrics diff`` draw a column for every number of every file that
``dvc.yaml`` declares as metrics. The stages' own files hold every number they measured (latency
percentiles, round spreads, parity differences, losses per epoch...): dozens of columns, most of
which differ on every run, so two experiments that differ in one param filled a table 2,700
characters wide. So ``dvc.yaml`` declares these two small files as the pipeline's metrics, each
written by the stage that measures its numbers (so an experiment that stops at ``evaluate``, as a
tuning trial does, still shows its quality), and the stages' own files stay where they are as
cached outputs, numbers still, for ``dvc metrics show <file>`` and the model card.

Keys, kept short because each is a column header:

- ``quality.json`` (``evaluate``): ``gate`` (1 when every quality gate passed, else 0), ``map50``
  and ``map50_95`` of the PyTorch model on the val split, and ``ap.<class>``, each class's AP50-95,
  under the class's key name (:func:`class_keys`).
- ``deployment.json`` (``benchmark``): ``deployable``, how many deploy artifacts passed their
  accuracy gate; ``ms.<artifact>``, the forward pass's p50 latency (``model_ms``) of each deploy
  artifact on the CPU under the artifact's name (``onnx-fp32``, ``onnx-int8``, ...), GPU rows under
  their benchmark row's name (``pytorch-cuda``, ``tensorrt``, ...); ``unstable.<artifact>: 1``
  beside the ``ms`` of each row the benchmark flagged as noise (``stable: 0``: its rounds disagreed,
  or its p50 was far above its fastest call), absent for a stable row, so a noisy number never
  reaches ``dvc exp show`` without its flag and a clean run adds no column; and ``mb.<artifact>``,
  each deployable artifact's size in MB. The PyTorch checkpoint timed on the CPU is the reference,
  not a deploy artifact: it stays in ``metrics/benchmark.json``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# What a key name may hold. DVC flattens nested numbers into column names joined by '.', a '/' is
# what `make compare` recognises a dependency column by (a path), and a space splits a header in
# every text tool: a class name is a user's, and may hold any of them (coco's "traffic light").
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def class_keys(names: Sequence[str]) -> dict[str, str]:
    """The key name of each class in ``metrics/quality.json`` (``ap.<key>``), safe for any class name.

    Every character outside ``[A-Za-z0-9_-]`` becomes ``_`` (``bus/coach`` -> ``bus_coach``,
    ``traffic light`` -> ``traffic_light``); when that makes two classes share a key, each of them
    gets its class id appended (``bus_coach_5``), again until no two share one, so keys stay
    distinct and stable for a given ``data.yaml``.

    Args:
        names: The class names in class-id order.

    Returns:
        Each class name's key, in class-id order.
    """
    keys = [_UNSAFE.sub("_", name) or "_" for name in names]
    # Appending the id can meet another class's key ("bus coach" -> "bus_coach_1" beside a class
    # named "bus_coach_1"): repeat until none is shared. Each round makes the shared keys longer and
    # the ids differ, so it ends.
    while len(set(keys)) < len(keys):
        counts = Counter(keys)
        keys = [key if counts[key] == 1 else f"{key}_{cls}" for cls, key in enumerate(keys)]
    return dict(zip(names, keys, strict=True))


def unsafe_class_names(names: Sequence[str]) -> dict[str, str]:
    """The class names whose key name differs from the name itself, with their key.

    Args:
        names: The class names in class-id order.

    Returns:
        Each such name's key (:func:`class_keys`), in class-id order; empty when every name is safe.
    """
    return {name: key for name, key in class_keys(names).items() if key != name}


def quality(evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of ``metrics/quality.json``.

    Args:
        evaluate: What ``metrics/evaluate.json`` holds.

    Returns:
        The gate verdict, mAP50, mAP50-95 and each class's AP50-95 under its key (:func:`class_keys`).
    """
    per_class = evaluate.get("per_class", {})
    keys = class_keys(list(per_class))
    return {
        "gate": int(evaluate["gates"]["passed"]),
        "map50": evaluate["map50"],
        "map50_95": evaluate["map50_95"],
        # A class with no val boxes has no AP: no column rather than a null.
        "ap": {keys[name]: c["ap50_95"] for name, c in per_class.items() if c.get("ap50_95") is not None},
    }


def deployment(
    deploy: Mapping[str, Any] | None, latency_ms: Mapping[str, float], unstable: Iterable[str] = ()
) -> dict[str, Any]:
    """The numbers of ``metrics/deployment.json``.

    Args:
        deploy: What ``metrics/deploy.json`` holds, or ``None`` when nothing was exported (failed gate).
        latency_ms: The p50 of each deploy artifact's forward pass, by its summary name
            (:func:`stages.latency.rows.summary_latency`).
        unstable: The names in ``latency_ms`` whose measurement was flagged as noise
            (:func:`stages.latency.rows.summary_unstable`).

    Returns:
        How many artifacts are deployable, the latency (with the noise flags) and size of each.

    Raises:
        ValueError: When an unstable name has no latency (a flag beside nothing).
    """
    artifacts = {name: m for name, m in (deploy or {}).items() if name != "pytorch"}
    deployable = {name: m for name, m in artifacts.items() if m.get("deployable")}
    summary: dict[str, Any] = {"deployable": len(deployable)}
    if latency_ms:
        summary["ms"] = dict(latency_ms)
    flagged = sorted(set(unstable))
    if set(flagged) - set(latency_ms):
        raise ValueError(f"unstable rows without a latency: {sorted(set(flagged) - set(latency_ms))}")
    if flagged:
        summary["unstable"] = dict.fromkeys(flagged, 1)
    sizes = {name: m["size_mb"] for name, m in deployable.items() if m.get("size_mb") is not None}
    if sizes:
        summary["mb"] = sizes
    return summary
