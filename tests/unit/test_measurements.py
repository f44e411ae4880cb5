import numpy as np
import pytest

from stages.backends.compare import compare
from stages.backends.inference import batches, letterbox
from stages.core.errors import PipelineError
from stages.latency.stats import stability, summarise, time_calls


def test_summarise_percentiles():
    lat = summarise([float(v) for v in range(1, 101)])
    assert lat.p50 == pytest.approx(50.5)
    assert lat.p10 == pytest.approx(10.9)
    assert lat.p90 == pytest.approx(90.1)
    assert lat.p99 == pytest.approx(99.01)
    assert lat.min == 1 and lat.max == 100
    assert lat.mean == pytest.approx(50.5)


def test_stability_flags_spread_rounds_and_a_p50_far_above_the_fastest_call():
    cv, stable = stability([10.0, 10.2, 9.9, 10.1, 10.0], p50=10.0, fastest=9.0)
    assert cv < 0.02 and stable
    cv, stable = stability([10.0, 14.0, 9.0, 21.0, 10.0], p50=10.0, fastest=9.0)
    assert cv > 0.10 and not stable
    assert not stability([10.0, 10.0], p50=10.0, fastest=3.0)[1]  # p50 over 3x the fastest call
    assert stability([10.0], p50=10.0, fastest=9.0) == (0.0, True)  # one round: no spread to measure


def test_time_calls_runs_warmup_untimed():
    calls = []
    samples = time_calls(calls.append, iterations=5, warmup=3)
    assert calls == [0, 1, 2, 0, 1, 2, 3, 4]
    assert len(samples) == 5 and all(s >= 0 for s in samples)


def test_compare_outputs_splits_boxes_and_scores():
    ref = np.zeros((2, 7, 10), dtype=np.float32)
    ref[:, 4, 3] = 0.9
    cand = ref.copy()
    cand[0, 1, 0] += 0.5  # a box coordinate
    cand[1, 5, 2] += 0.01  # a score
    c = compare(ref, cand)
    assert c.max_abs_diff_boxes_px == pytest.approx(0.5)
    assert c.max_abs_diff_scores == pytest.approx(0.01)
    assert c.mean_abs_diff > 0
    assert c.best_anchor_agreement == 1.0


def test_compare_outputs_rejects_shape_mismatch():
    with pytest.raises(PipelineError, match="shapes differ"):
        compare(np.zeros((1, 7, 10)), np.zeros((1, 8, 10)))


def test_letterbox_keeps_aspect_and_pads():
    image = np.full((50, 100, 3), 255, dtype=np.uint8)
    out = letterbox(image, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert out[:, 0, 0] == pytest.approx(114 / 255)  # padding row
    assert out[:, 32, 32] == pytest.approx(1.0)  # image content


def test_batches_cycle_through_few_images():
    inputs = np.arange(3, dtype=np.float32).reshape(3, 1)
    out = batches(inputs, 2)
    assert [b.tolist() for b in out] == [[[0.0], [1.0]]]
    out = batches(inputs, 4)
    assert [b.ravel().tolist() for b in out] == [[0.0, 1.0, 2.0, 0.0]]
