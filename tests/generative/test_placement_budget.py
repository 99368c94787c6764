"""The search budget: CPU seconds of the process, so a loaded machine does not shorten the
search, with a wall-clock cap so it cannot hang it either."""

from __future__ import annotations

import time

import pytest

from trifecta.generative.placement_milp import WALL_CAP, Budget


def burn(cpu_seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < cpu_seconds:
        sum(range(1000))


def test_cpu_spent_counts_and_sleeping_does_not() -> None:
    assert Budget.of(1.0).wall_cap_s == pytest.approx(WALL_CAP * 1.0)
    budget = Budget(cpu_s=1.0, wall_cap_s=1000.0)  # however loaded the machine running this
    time.sleep(0.2)  # wall time, no CPU: the budget is barely touched
    assert budget.left() > 0.9
    burn(0.3)
    assert 0.6 <= budget.left() <= 0.7 + 0.05
    assert budget.progress() == pytest.approx(0.3, abs=0.05)  # CPU spent, not wall


def test_the_wall_cap_ends_a_budget_whatever_cpu_is_left() -> None:
    budget = Budget(cpu_s=10.0, wall_cap_s=0.1)
    time.sleep(0.15)
    assert budget.left() == 0.0
    assert budget.progress() >= 1.0
    assert budget.highs_limit() == 0.0


def test_a_part_never_exceeds_what_its_parent_has_left() -> None:
    parent = Budget(cpu_s=0.5, wall_cap_s=1000.0)
    burn(0.2)
    wall_left = parent.wall_left()  # read first: it only shrinks, however slow the machine
    part = parent.part(1.0)
    assert part.cpu_s <= 0.3 + 1e-3
    assert part.wall_cap_s <= wall_left
    assert Budget.of(part) is part
    burn(0.35)
    spent = parent.part(1.0)  # nothing left: a part that is over before it starts
    assert spent.left() == 0.0 and spent.progress() == 1.0


def test_highs_gets_wall_seconds_for_the_cpu_share_measured() -> None:
    """Half the wall time asleep: a CPU second is worth about two wall seconds to HiGHS
    (whose limit is wall time), and never more than the wall left."""
    budget = Budget(cpu_s=5.0, wall_cap_s=1000.0)
    for _ in range(4):
        burn(0.1)
        time.sleep(0.1)
    # At most half the wall time computing (less when others load the machine).
    assert 0.02 <= budget.share() <= 0.6
    assert budget.highs_limit(1.0) == pytest.approx(1.0 / budget.share(), rel=0.1)
    assert budget.highs_limit() <= budget.wall_left() + 1e-6
    part = budget.part(1.0)  # too young to measure: takes its parent's share
    assert part.share() == pytest.approx(budget.share(), abs=0.1)
