"""Greedy cheapest-fit placement: the baseline the planner is measured against.

Capsules are taken largest first, and each is placed on its own, the way an operator adds
tenants one at a time (first fit by marginal cost): each option for its cognitive tier (home
environment, tier), with its light requests on the edge when the edge is cheaper per token,
is priced by what it adds to the bill, the replicas that must be opened for it (0 where open
replicas have room); the cheapest wins, ties going to the lower price per token. Its
generative requests go where opening costs least the same way. Load fills the replicas
already open first; new replicas are opened of the cheapest shape per token with devices
left. Nothing is ever re-packed, so partly filled replicas and scarce devices are where it
loses to the planner.

`rule="price-per-token"` is the older variant: options ranked by price per token alone, the
opening cost ignored (it wins on some fleets: marginal cost is myopic, and opens a replica
cheap per hour but dear per token). Benchmarks run both and compare against the better.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from trifecta.core.errors import Infeasible
from trifecta.core.settings import Phase
from trifecta.fleet.assemble import CapsuleDecision, assemble_plan
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.classes import CapsuleClass, build_classes
from trifecta.fleet.costs import phase_budget
from trifecta.fleet.plan_model import Plan, SolverReport
from trifecta.fleet.pools import CONTEXT_SERVICE, PoolShape, layer_models, pool_shapes
from trifecta.fleet.topology import Topology

Group = tuple[str, str, str]
GreedyRule = Literal["marginal", "price-per-token"]


@dataclass
class _State:
    topology: Topology
    shapes: dict[Group, list[PoolShape]]
    replicas: dict[PoolShape, int] = field(default_factory=lambda: defaultdict(int))
    spare: dict[Group, float] = field(default_factory=lambda: defaultdict(float))
    devices_left: dict[tuple[str, str], int] = field(default_factory=dict)
    # Each group's shapes cheapest per token first, and its best shape with devices left:
    # that changes only when devices are taken, so it is kept until then (the greedy asks
    # for it hundreds of thousands of times on 10,000 capsules).
    by_value: dict[Group, list[PoolShape]] = field(default_factory=dict)
    _best: dict[Group, tuple[PoolShape | None, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices_left = {
            (env.name, acc): env.devices(acc)
            for env in self.topology.environments
            for acc in env.accelerators
        }
        self.by_value = {
            group: sorted(shapes, key=lambda s: s.price / s.capacity)
            for group, shapes in self.shapes.items()
        }

    def _devices_left(self, shape: PoolShape) -> int:
        if shape.accelerator is None:
            return 1 << 30
        return self.devices_left.get((shape.environment, shape.accelerator), 0)

    def best_shape(self, group: Group) -> PoolShape | None:
        """The shape of `group` cheapest per token that still has devices left. Devices are
        only ever taken, so a shape passed over never comes back: the one found last time
        stands while it has room."""
        return self._best_and_price(group)[0]

    def unit_price(self, group: Group) -> float:
        """USD per hour per token/s of the best shape of `group` with devices left."""
        return self._best_and_price(group)[1]

    def _best_and_price(self, group: Group) -> tuple[PoolShape | None, float]:
        kept = self._best.get(group)
        if kept is not None and (kept[0] is None or self._devices_left(kept[0]) >= kept[0].tp):
            return kept
        found = next(
            (s for s in self.by_value.get(group, []) if self._devices_left(s) >= s.tp), None
        )
        kept = (found, math.inf if found is None else found.price / found.capacity)
        self._best[group] = kept
        return kept

    def opening(self, group: Group, load: float) -> tuple[float, list[PoolShape]] | None:
        """Cost and the replicas to open so that `group` takes `load` more (None: no devices
        left)."""
        need = load - self.spare[group]
        if need <= 1e-9:
            return 0.0, []
        best = self.best_shape(group)
        if best is None:
            return None
        count = max(1, math.ceil(need / best.capacity - 1e-9))
        if self._devices_left(best) >= count * best.tp:  # the usual case: all of the best shape
            return count * best.price, [best] * count
        used: dict[tuple[str, str], int] = defaultdict(int)
        opened: list[PoolShape] = []
        cost = 0.0
        by_value = self.by_value.get(group, [])
        while need > 1e-9:
            shape = next(
                (
                    s
                    for s in by_value
                    if self._devices_left(s) - used[(s.environment, s.accelerator or "")] >= s.tp
                ),
                None,
            )
            if shape is None:
                return None
            used[(shape.environment, shape.accelerator or "")] += shape.tp
            opened.append(shape)
            cost += shape.price
            need -= shape.capacity
        return cost, opened

    def commit(self, group: Group, load: float, opened: list[PoolShape]) -> None:
        for shape in opened:
            self.replicas[shape] += 1
            self.spare[group] += shape.capacity
            if shape.accelerator is not None:
                self.devices_left[(shape.environment, shape.accelerator)] -= shape.tp
        self.spare[group] -= load


def _cheaper(score: tuple[float, float], than: tuple[float, float]) -> bool:
    """Lower marginal cost, or the same (to a micro-dollar) at a lower price per token."""
    if abs(score[0] - than[0]) > 1e-6:
        return score[0] < than[0]
    return score[1] < than[1] - 1e-12


@dataclass
class GreedyPlacement:
    """What the greedy decided, before it is assembled into a `Plan`."""

    rule: GreedyRule
    decisions: list[CapsuleDecision]
    replicas: dict[PoolShape, int]
    seconds: float

    @property
    def cost_per_hour(self) -> float:
        return sum(shape.price * count for shape, count in self.replicas.items())


def greedy_plan(
    capsules: Sequence[Capsule],
    topology: Topology,
    phase: Phase,
    rule: GreedyRule = "marginal",
) -> Plan:
    """Place `capsules` greedily (see the module docstring); raises `Infeasible` when a
    capsule finds no room."""
    shapes = pool_shapes(topology, phase)
    classes = build_classes(capsules, topology, phase, shapes)
    placed = greedy_placement(classes, shapes, topology, rule)
    report = SolverReport(
        method=f"greedy-first-fit-{rule}",
        status="heuristic",
        seconds=placed.seconds,
        capsules=len(capsules),
        classes=len(classes),
    )
    position = {c.id: i for i, c in enumerate(capsules)}
    decisions = sorted(placed.decisions, key=lambda d: position[d.capsule.id])
    return assemble_plan(decisions, placed.replicas, topology, phase, report, phase_budget(phase))


def greedy_placement(
    classes: Sequence[CapsuleClass],
    shapes: Sequence[PoolShape],
    topology: Topology,
    rule: GreedyRule = "marginal",
) -> GreedyPlacement:
    """The greedy's decisions and replicas for capsules already grouped into classes (the
    planner runs it on its own classes, as the baseline every plan must beat)."""
    by_marginal = rule == "marginal"
    started = time.perf_counter()
    generative_model, edge_model = layer_models()
    grouped: dict[Group, list[PoolShape]] = defaultdict(list)
    for shape in shapes:
        grouped[shape.group].append(shape)
    state = _State(topology, grouped)
    decisions: list[CapsuleDecision] = []
    order = sorted(
        ((cls, c) for cls in classes for c in cls.capsules),
        key=lambda item: -item[1].demand.tokens_per_s,
    )
    for cls, capsule in order:
        demand = capsule.demand
        light = demand.light_share * demand.tokens_per_s
        generative = demand.generative_share * demand.tokens_per_s
        gen_choice: list[tuple[Group, float, list[PoolShape]]] = []
        if generative > 0:
            fits = []
            for env in cls.generative_environments:
                group = (env, "generative", generative_model)
                opening = state.opening(group, generative)
                if opening is not None:
                    cost = opening[0] if by_marginal else 0.0
                    fits.append(((cost, state.unit_price(group)), group, opening[1]))
            if not fits:
                raise Infeasible(
                    f"greedy: no generative capacity left for capsule {capsule.id}",
                    field="capacity",
                )
            _, group, opened = min(fits, key=lambda item: item[0])
            gen_choice = [(group, generative, opened)]
        best: (
            tuple[tuple[float, float], list[tuple[Group, float, list[PoolShape]]], CapsuleDecision]
            | None
        )
        best = None
        # the cheapest edge per token does not depend on the home: chosen once per capsule
        cheapest_edge = (
            min(cls.edges, key=lambda e: state.unit_price((e, "edge", edge_model)), default=None)
            if light > 0
            else None
        )
        edge_unit = (
            state.unit_price((cheapest_edge, "edge", edge_model)) if cheapest_edge else math.inf
        )
        for env, tier in cls.homes:
            cognitive = (env, "cognitive", tier)
            unit = state.unit_price(cognitive)
            edge_env = cheapest_edge if edge_unit < unit else None
            # offload where the edge is cheaper; keep the requests in the cloud if it is full
            for edge in [edge_env, None] if edge_env else [None]:
                offload = light if edge else 0.0
                steps = [
                    (cognitive, demand.tokens_per_s - generative - offload),
                    ((env, "context", CONTEXT_SERVICE), demand.requests_per_s),
                ]
                if edge:
                    steps.append(((edge, "edge", edge_model), offload))
                plan_steps = []
                marginal = 0.0
                for group, load in steps:
                    opening = state.opening(group, load)
                    if opening is None:
                        break
                    marginal += opening[0] if by_marginal else 0.0
                    plan_steps.append((group, load, opening[1]))
                else:
                    unit = sum(load * state.unit_price(group) for group, load, _ in plan_steps)
                    score = (marginal, unit)
                    if best is None or _cheaper(score, best[0]):
                        decision = CapsuleDecision(
                            capsule,
                            env,
                            tier,
                            {edge: offload} if edge else {},
                            {gen_choice[0][0][0]: generative} if gen_choice else {},
                        )
                        best = (score, plan_steps, decision)
                    break
        if best is None:
            raise Infeasible(f"greedy: no room left for capsule {capsule.id}", field="capacity")
        for group, load, opened in best[1] + gen_choice:
            state.commit(group, load, opened)
        decisions.append(best[2])
    replicas = {shape: count for shape, count in state.replicas.items() if count > 0}
    return GreedyPlacement(rule, decisions, replicas, time.perf_counter() - started)
