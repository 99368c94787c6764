"""The two bias rules equal their definitions, elementwise, and stay bounded."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.generative.tuning import TuningConfig, feedback_update, load_update

CONFIG = TuningConfig(load_step=0.01, feedback_step=0.05, bound=0.3)
loads = st.lists(st.lists(st.integers(0, 50), min_size=8, max_size=8), min_size=2, max_size=2).map(
    lambda rows: torch.tensor(rows, dtype=torch.float32)
)
biases = st.lists(
    st.lists(st.floats(-0.3, 0.3), min_size=8, max_size=8), min_size=2, max_size=2
).map(lambda rows: torch.tensor(rows, dtype=torch.float32))


@settings(max_examples=60, deadline=None)
@given(bias=biases, load=loads)
def test_load_rule_is_deepseek_v3s(bias: torch.Tensor, load: torch.Tensor) -> None:
    got = load_update(bias, load, CONFIG)
    for layer in range(2):
        mean = float(load[layer].mean())
        for e in range(8):
            c = float(load[layer, e])
            step = -CONFIG.load_step if c > mean else CONFIG.load_step if c < mean else 0.0
            expected = min(CONFIG.bound, max(-CONFIG.bound, float(bias[layer, e]) + step))
            assert abs(float(got[layer, e]) - expected) < 1e-6


@settings(max_examples=60, deadline=None)
@given(bias=biases, load=loads, success=st.booleans())
def test_feedback_rule_moves_used_experts_by_their_share(
    bias: torch.Tensor, load: torch.Tensor, success: bool
) -> None:
    got = feedback_update(bias, load, success, CONFIG)
    sign = 1.0 if success else -1.0
    for layer in range(2):
        total = float(load[layer].sum())
        for e in range(8):
            share = float(load[layer, e]) / total if total else 0.0
            raw = float(bias[layer, e]) + CONFIG.feedback_step * sign * share
            expected = min(CONFIG.bound, max(-CONFIG.bound, raw))
            assert abs(float(got[layer, e]) - expected) < 1e-6


def test_masked_experts_do_not_count_as_underloaded() -> None:
    load = torch.tensor([[10.0, 2.0, 0.0, 0.0]])
    active = torch.tensor([[True, True, False, False]])
    got = load_update(torch.zeros(1, 4), load, CONFIG, active)
    expected = torch.tensor([[-CONFIG.load_step, CONFIG.load_step, 0.0, 0.0]])
    assert torch.allclose(got, expected)


def test_repeated_updates_stay_within_the_bound() -> None:
    bias, load = torch.zeros(2, 8), torch.zeros(2, 8)
    load[:, 0] = 100
    for _ in range(500):
        bias = feedback_update(bias, load, True, CONFIG)
        bias = load_update(bias, torch.flip(load, [1]), CONFIG)
    assert float(bias.abs().max()) <= CONFIG.bound + 1e-6  # float32 of the bound
