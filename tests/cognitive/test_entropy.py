"""The entropy signal, checked against distributions built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.cognitive.entropy import (
    SignalReader,
    entropy_from_logits,
    entropy_from_top_logprobs,
    first_crossing,
    signal_score,
    signal_trace,
)
from trifecta.core.errors import InvalidInput


def test_entropy_of_a_hand_built_distribution() -> None:
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2 nats.
    logits = np.log([0.5, 0.25, 0.25]) + 3.0  # a shift must not matter
    assert entropy_from_logits(logits) == pytest.approx(1.5 * math.log(2), abs=1e-12)


def test_entropy_of_uniform_and_certain_distributions() -> None:
    assert entropy_from_logits(np.zeros(46)) == pytest.approx(math.log(46), abs=1e-12)
    certain = np.array([0.0, -np.inf, -np.inf, -np.inf])  # tokens ruled out add nothing
    assert entropy_from_logits(certain) == pytest.approx(0.0, abs=1e-12)


def test_entropy_batched_over_the_last_axis() -> None:
    logits = np.array([[0.0, 0.0], [10.0, -10.0]])
    values = entropy_from_logits(logits)
    assert values.shape == (2,)
    assert values[0] == pytest.approx(math.log(2))
    assert values[1] < 1e-7


def test_top_logprobs_estimate_is_exact_when_every_token_is_listed() -> None:
    probs = [0.5, 0.25, 0.125, 0.125]
    exact = -sum(p * math.log(p) for p in probs)
    assert entropy_from_top_logprobs([math.log(p) for p in probs]) == pytest.approx(exact)


def test_top_logprobs_estimate_of_a_truncated_distribution() -> None:
    # Top-2 of (0.4, 0.3, 0.1, 0.1, 0.1): the missing 0.3 is charged at -ln 0.3 per unit mass.
    estimate = entropy_from_top_logprobs([math.log(0.4), math.log(0.3)])
    expected = -(0.4 * math.log(0.4) + 0.3 * math.log(0.3)) + 0.3 * -math.log(0.3)
    assert estimate == pytest.approx(expected)
    exact = -(0.4 * math.log(0.4) + 0.3 * math.log(0.3) + 3 * 0.1 * math.log(0.1))
    assert estimate <= exact


@given(st.lists(st.floats(min_value=-8, max_value=8), min_size=2, max_size=40), st.integers(1, 20))
def test_top_logprobs_estimate_never_exceeds_the_exact_entropy(logits: list[float], k: int) -> None:
    values = np.asarray(logits)
    log_p = values - np.log(np.exp(values - values.max()).sum()) - values.max()
    top = sorted(log_p.tolist(), reverse=True)[:k]
    assert entropy_from_top_logprobs(top) <= entropy_from_logits(values) + 1e-9


def test_top_logprobs_estimate_needs_a_value() -> None:
    with pytest.raises(InvalidInput, match="top_logprobs"):
        entropy_from_top_logprobs([])


def test_block_signal_is_the_rise_over_the_block_reference() -> None:
    # Reference 0.5 at the start; 0.2 is a rise in confidence and starts a new block; 0.9 and
    # 0.6 are read against 0.2.
    trace = signal_trace([0.5, 0.7, 0.2, 0.9, 0.6], "block")
    assert trace == pytest.approx([0.5, 0.2, 0.0, 0.7, 0.4])
    reader = SignalReader("block")
    for h in [0.5, 0.7, 0.2, 0.9]:
        reader.push(h)
    assert reader.block_start() == 2


def test_step_signal_is_the_mean_entropy_of_each_reasoning_step() -> None:
    # The worked answer "104=87": step one is "104=" (the separator closes it), step two "87".
    tokens = ["1", "0", "4", "=", "8", "7"]
    entropies = [0.2, 0.4, 0.0, 0.2, 0.9, 0.1]
    trace = signal_trace(entropies, "step", tokens=tokens)
    assert trace == pytest.approx([0.2, 0.3, 0.2, 0.2, 0.9, 0.5])
    reader = SignalReader("step")
    for h, t in zip(entropies[:5], tokens[:5], strict=True):
        reader.push(h, t)
    assert reader.block_start() == 4  # the finished step is the accepted prefix
    crossing = first_crossing(entropies, 0.6, "step", tokens=tokens)
    assert crossing is not None and (crossing.step, crossing.block_start) == (4, 4)
    # Without tokens there are no separators: one step, the running mean.
    assert signal_trace([0.2, 0.4], "step") == pytest.approx([0.2, 0.3])


def test_window_mean_and_max() -> None:
    entropies = [0.1, 0.3, 0.8, 0.2]
    assert signal_trace(entropies, "mean", window=2) == pytest.approx([0.1, 0.2, 0.55, 0.5])
    assert signal_trace(entropies, "max", window=2) == pytest.approx([0.1, 0.3, 0.8, 0.8])
    assert signal_score(entropies, "max", window=4) == pytest.approx(0.8)


def test_first_crossing_and_no_crossing() -> None:
    crossing = first_crossing([0.1, 0.2, 0.9, 0.1], 0.5, "max", window=2)
    assert crossing is not None
    assert (crossing.step, crossing.value, crossing.block_start) == (2, pytest.approx(0.9), 1)
    assert first_crossing([0.1, 0.2, 0.4], 0.5, "max") is None
    assert signal_score([], "block") == 0.0


def test_unknown_aggregate_is_refused() -> None:
    with pytest.raises(InvalidInput, match="aggregate"):
        SignalReader("median")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="window"):
        SignalReader("mean", window=0)
