"""`Goal.of`, the goal row the benchmarks build from a figure (or a bootstrap estimate) and one
bound: the same row the long `Goal(...)` form gave, so a benchmark's goals and verdicts do not
change when it moves to the helper; and `bootstrap_difference`."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks._report import Goal, bootstrap_difference, bootstrap_ratio, goals_markdown
from hypothesis import given
from hypothesis import strategies as st

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(figure=finite, low=finite, high=finite, bound=finite, at_least=st.booleans())
def test_an_estimate_gives_the_row_the_long_form_gave(
    figure: float, low: float, high: float, bound: float, at_least: bool
) -> None:
    direction = "at least" if at_least else "at most"
    long_form = Goal(
        claim="c",
        figure=figure,
        low=low,
        high=high,
        goal=bound,
        direction=direction,
        unit="x",
        note="n",
    )
    bounds = {"at_least": bound} if at_least else {"at_most": bound}
    short = Goal.of("c", (figure, low, high), unit="x", note="n", **bounds)
    assert short == long_form
    assert short.model_dump() == long_form.model_dump()
    assert short.met == long_form.met


@given(figure=finite, bound=finite, at_least=st.booleans())
def test_a_bare_figure_has_no_interval_and_is_judged_by_itself(
    figure: float, bound: float, at_least: bool
) -> None:
    goal = Goal.of("c", figure, at_least=bound) if at_least else Goal.of("c", figure, at_most=bound)
    assert goal.low is None and goal.high is None and goal.interval() == ""
    assert goal.met == (figure >= bound if at_least else figure <= bound)


def test_integers_are_stored_as_the_long_form_stored_them() -> None:
    # load.py's counts (5xx responses, lost writes) are ints held to 0
    assert Goal.of("errors", 0, at_most=0) == Goal(
        claim="errors", figure=0, goal=0, direction="at most"
    )
    assert isinstance(Goal.of("errors", 3, at_most=0).figure, float)


def test_the_whole_interval_must_clear_the_bound() -> None:
    assert not Goal.of("speedup", (1.2, 0.98, 1.4), at_least=1.0).met
    assert Goal.of("speedup", (1.2, 1.01, 1.4), at_least=1.0).met
    assert not Goal.of("p99 ms", (4.0, 3.0, 5.5), at_most=5.0).met
    assert Goal.of("p99 ms", (4.0, 3.0, 5.0), at_most=5.0).met
    row = goals_markdown([Goal.of("p99", (4.0, 3.0, 5.0), at_most=5.0, unit=" ms")])[-1]
    assert row == "| p99 | 4.00 ms | [3.00, 5.00] | at most 5 ms | met |"


@pytest.mark.parametrize("bounds", [{}, {"at_least": 1.0, "at_most": 2.0}])
def test_exactly_one_bound_is_required(bounds: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="exactly one of at_least= and at_most="):
        Goal.of("c", 1.0, at_least=bounds.get("at_least"), at_most=bounds.get("at_most"))


def test_bootstrap_difference_brackets_a_known_gain() -> None:
    with_layer = [1.0] * 199 + [0.0]
    without = [1.0] * 58 + [0.0] * 142
    gain, low, high = bootstrap_difference(with_layer, without)
    assert gain == pytest.approx(0.995 - 0.29)
    assert low < gain < high
    assert low > 0.6 and high < 0.8  # about two standard errors (0.033) either side
    same = bootstrap_difference(without, without)
    assert same[0] == 0.0 and same[1] < 0.0 < same[2]


def test_bootstrap_difference_is_seeded_like_the_ratio() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(2.0, 0.1, 40).tolist(), rng.normal(1.0, 0.1, 40).tolist()
    assert bootstrap_difference(a, b, seed=5) == bootstrap_difference(a, b, seed=5)
    assert bootstrap_ratio(a, b, seed=5) == bootstrap_ratio(a, b, seed=5)
