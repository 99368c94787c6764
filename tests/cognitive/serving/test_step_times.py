"""The step-time model: fitted from recorded steps, read as a latency batch."""

from __future__ import annotations

import pytest

from trifecta.cognitive.serving.step_times import MIN_SAMPLES, StepTimes


def record(times: StepTimes, cost: dict[int, float]) -> None:
    for _ in range(MIN_SAMPLES):
        for batch, seconds in cost.items():
            times.record(batch, seconds)


def test_rows_that_cost_time_shrink_the_latency_batch() -> None:
    times = StepTimes(16)
    record(times, {b: 1e-3 + 1e-4 * b for b in (1, 2, 4, 8)})
    a, c = times.fit() or (0.0, 0.0)
    assert a == pytest.approx(1e-3)
    assert c == pytest.approx(1e-4)
    # a one-row step costs 1.1 ms; within 25% of it: 0.275 ms of extra rows at 0.1 ms each
    assert times.latency_batch(0.25) == 3


def test_flat_steps_or_no_data_leave_the_whole_batch() -> None:
    times = StepTimes(16)
    assert times.latency_batch(0.25) == 16  # nothing measured yet
    times.record(1, 1e-3)
    times.record(8, 5e-3)
    assert times.latency_batch(0.25) == 16  # too few steps to count
    flat = StepTimes(16)
    record(flat, {1: 1e-3, 16: 1e-3})  # a GPU: the batch is free
    assert flat.latency_batch(0.25) == 16


def test_sizes_outside_the_batch_are_ignored() -> None:
    times = StepTimes(4)
    times.record(0, 1.0)
    times.record(9, 1.0)
    assert times.fit() is None


def test_a_first_call_outlier_does_not_flip_the_slope() -> None:
    """A fresh replica's first steps of a size include torch's first-call work (7 ms against
    0.6 ms, measured): a median of recent steps ignores them, where an average seeded with
    them fitted a negative slope and claimed the whole batch."""
    times = StepTimes(16)
    times.record(1, 7e-3)
    times.record(2, 5e-3)
    record(times, {b: 1e-3 + 1e-4 * b for b in (1, 2, 4, 8)})
    _, c = times.fit() or (0.0, 0.0)
    assert c == pytest.approx(1e-4)
    assert times.latency_batch(0.25) == 3
