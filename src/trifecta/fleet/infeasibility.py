"""Why a fleet cannot be planned: which capsules, and which constraint.

Requirements no environment meets (sovereignty, quality, a model that fits nowhere) are caught
before solving (`fleet/classes.py`). When the program itself is infeasible, the capacity is
short somewhere: an elastic copy of the program, in which capsules may be left unplaced at a
prohibitive price, names the fewest capsules that cannot be placed and the environments whose
devices are all in use.
"""

from __future__ import annotations

import copy
import math

from trifecta.core.errors import Infeasible
from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.class_milp import Model
from trifecta.fleet.classes import describe
from trifecta.fleet.topology import Topology


def explain_infeasible(model: Model, topology: Topology, phase: Phase) -> Infeasible:
    program = copy.deepcopy(model.program)
    penalty = 1e3 * (1 + max(program.cost, default=1.0)) * (1 + len(program.cost))
    unplaced: dict[int, int] = {}
    for c, cls in enumerate(model.classes):
        u = program.column(penalty, 0, cls.count, integer=True)
        unplaced[c] = u
        program.entries.append((model.place_rows[c], u, 1.0))
        if c in model.generative_rows:
            program.entries.append(
                (model.generative_rows[c], u, cls.generative_share * cls.tokens_per_s)
            )
    # The relaxation first (fast, and short capacity shows there already); whole replicas
    # and capsules only when the shortage is one of rounding.
    result = program.solve(integer=(), time_limit=10.0, mip_rel_gap=1e-6)
    x = getattr(result, "x", None)
    if x is None or sum(x[u] for u in unplaced.values()) < 1e-6:
        result = program.solve(time_limit=5.0, mip_rel_gap=1e-3)
        x = getattr(result, "x", None)
    if x is None:
        return Infeasible(
            f"the fleet does not fit the topology's devices in phase {phase}", field="capacity"
        )

    left_out: list[Capsule] = []
    places: set[str] = set()
    tokens = 0.0
    for c, cls in enumerate(model.classes):
        count = min(cls.count, math.ceil(x[unplaced[c]] - 1e-6))
        if count:
            left_out += cls.capsules[-count:]
            tokens += count * cls.tokens_per_s
            places |= {env for env, _ in cls.homes} | set(cls.edges)
            places |= set(cls.generative_environments)
    full = []
    for (env, acc), row in sorted(model.device_rows.items()):
        if env not in places:
            continue
        used = sum(x[col] * coef for r, col, coef in program.entries if r == row)
        total = topology.environment(env).devices(acc)
        if total and used >= total - 1e-6:
            full.append(f"{env} {acc} {round(used)}/{total}")
    if not left_out:
        return Infeasible(
            f"no whole number of replicas fits the devices of phase "
            f"{phase} ({', '.join(full) or 'all environments'})",
            field="capacity",
        )
    sovereign = sorted({c.jurisdiction or "" for c in left_out if c.sovereign})
    rule = (
        (
            f" (sovereign capsules of jurisdiction {', '.join(repr(j) for j in sovereign)} may "
            f"use only sovereign and edge environments there)"
        )
        if sovereign
        else ""
    )
    devices = f"; devices all in use: {', '.join(full)}" if full else ""
    return Infeasible(
        f"{len(left_out)} capsules do not fit: {describe(left_out)} "
        f"({_fmt(tokens)} tokens/s); the environments they may use are "
        f"{', '.join(sorted(places))}{rule}{devices}",
        field="capacity",
    )


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or math.isclose(value, round(value)) else f"{value:.2f}"
