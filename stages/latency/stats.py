"""The timing loop and what a list of timed calls says: pooled percentiles and the rounds' stability."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

PERCENTILES = "every percentile over every timed call of every round, pooled (numpy's linear interpolation)"
MAX_CV = 0.10  # rounds whose p50s spread more than this are noise, not a measurement
MAX_P50_OVER_MIN = 3.0  # a p50 this far above the fastest call: the machine was busy


class Latency(BaseModel):
    """Latency of one batch forward pass, in milliseconds: every statistic over every timed call of every
    round, pooled (:data:`PERCENTILES`)."""

    p50: float
    p10: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float


def summarise(samples_ms: list[float]) -> Latency:
    """Percentiles, mean and spread of latency samples.

    Every percentile has one definition: over ``samples_ms``, every timed call of every round pooled,
    with numpy's linear interpolation. (A median of round medians for p50 beside pooled tails would
    set p50 and p90 on different populations; the rounds' spread is :func:`stability`'s business.)
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    p10, p50, p90, p99 = np.percentile(a, [10, 50, 90, 99])
    return Latency(
        p50=round(float(p50), 4),
        p10=round(float(p10), 4),
        p90=round(float(p90), 4),
        p99=round(float(p99), 4),
        mean=round(float(a.mean()), 4),
        std=round(float(a.std()), 4),
        min=round(float(a.min()), 4),
        max=round(float(a.max()), 4),
    )


def stability(round_p50s: list[float], p50: float, fastest: float) -> tuple[float, bool]:
    """The rounds' coefficient of variation, and whether the measurement is stable enough to publish as is."""
    r = np.asarray(round_p50s, dtype=np.float64)
    cv = float(r.std() / r.mean()) if len(r) > 1 and r.mean() > 0 else 0.0
    return round(cv, 4), cv <= MAX_CV and p50 <= MAX_P50_OVER_MIN * fastest


def time_calls(step: Callable[[int], Any], iterations: int, warmup: int) -> list[float]:
    """Call ``step(i)`` ``warmup`` times untimed, then ``iterations`` times timed; milliseconds per call."""
    for i in range(warmup):
        step(i)
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples
