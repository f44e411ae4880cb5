"""A runner made ready to time, and the rounds that time every runner, interleaved.

Every round, every timed step (the forward pass, end to end, each batch size of the throughput
sweep) first runs ``benchmark.warmup`` untimed calls; then the forward pass and end to end are timed
``benchmark.iterations`` times, each batch size ``benchmark.sweep_iterations`` times.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from stages.backends import Runner
from stages.backends.inference import batches, detections, letterbox, read_rgb
from stages.core.config import BenchmarkParams
from stages.core.errors import BackendUnavailable
from stages.latency.stats import time_calls


class Timed:
    """A backend ready to time: its model step, its end-to-end step, a step per other batch size it takes."""

    def __init__(
        self, runner: Runner, pool: np.ndarray, images: list[Path], imgsz: int, names: int, o: BenchmarkParams
    ) -> None:
        """Place every batch the steps send, so that placing (a host-device copy) is never timed.

        Raises:
            BackendUnavailable: When the runner does not take a batch of ``o.batch`` images.
        """
        self.runner = runner
        self.info = runner.info
        self.step = self._stepper(pool, o.batch)  # BackendUnavailable: the artifact does not take benchmark.batch
        self.end_to_end = None
        if takes(runner, pool, 1):
            self.end_to_end = lambda i: end_to_end(runner, images[i % len(images)], imgsz, names)
        # Throughput at the other batch sizes, where the artifact takes them (a static batch takes its own,
        # an engine its profile's range).
        self.batch_steps = {b: self._stepper(pool, b) for b in o.batch_sizes if b != o.batch and takes(runner, pool, b)}

    def _stepper(self, pool: np.ndarray, batch: int) -> Callable[[int], Any]:
        placed = [self.runner.place(x) for x in batches(pool, batch)]
        return lambda i: self.runner.forward(placed[i % len(placed)])


def takes(runner: Runner, pool: np.ndarray, batch: int) -> bool:
    """Whether ``runner`` accepts a batch of ``batch`` images: its static batch, else what ``place``
    accepts (an engine refuses sizes outside its optimization profile)."""
    if runner.batch is not None:
        return batch == runner.batch
    if runner.max_batch is not None and batch > runner.max_batch:
        return False
    try:
        runner.place(batches(pool, batch)[0])
    except BackendUnavailable:
        return False
    return True


def end_to_end(runner: Runner, image: Path, imgsz: int, classes: int) -> Any:
    """One image as an application runs it: decode the file, letterbox, forward, NMS."""
    x = letterbox(read_rgb(image), imgsz)[None]
    return detections(runner.predict(x), 0.25, 0.7, classes)


class Samples(BaseModel):
    """What one backend's rounds measured."""

    calls: list[float] = []  # every model-step call, ms
    round_p50s: list[float] = []
    end_to_end: list[float] = []
    batch_calls: dict[int, list[float]] = {}  # other batch sizes: every timed call of one batch, ms


def measure(timed: dict[str, Timed], o: BenchmarkParams) -> dict[str, Samples]:
    """Time every backend, round by round, interleaved, so drift on the machine hits them all alike.

    Every round, each step (forward pass, end to end, each batch size) runs ``o.warmup`` untimed
    calls first: the backends before it in the round have evicted its caches, and a batch size's
    first calls allocate. The forward pass and end to end are then timed ``o.iterations`` times,
    each batch size ``o.sweep_iterations`` times.

    Args:
        timed: The backends to time, by row name, in the order each round visits them.
        o: The ``benchmark`` params (rounds, warm-up and timed calls).

    Returns:
        Every timed call of each backend, by row name.
    """
    samples = {name: Samples() for name in timed}
    for _ in range(o.rounds):
        for name, t in timed.items():
            s = samples[name]
            calls = time_calls(t.step, o.iterations, o.warmup)
            s.calls.extend(calls)
            s.round_p50s.append(float(np.percentile(calls, 50)))
            if t.end_to_end is not None:
                s.end_to_end.extend(time_calls(t.end_to_end, o.iterations, o.warmup))
            for b, step in t.batch_steps.items():
                s.batch_calls.setdefault(b, []).extend(time_calls(step, o.sweep_iterations, o.warmup))
    return samples
