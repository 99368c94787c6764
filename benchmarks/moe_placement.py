"""MoE expert placement and node expansion on skewed expert-load traces, against round-robin
and a from-scratch EPLB-style greedy repack, in the same run.

Traces: per-window token counts per expert (tokens x top-k routed choices), drawn from a Zipf
law over the experts whose ranks are permuted per trace ("zipf"), or whose hot set moves:
between the measured window and the next one, a quarter of the ranks are reshuffled
("shift"). Placement figures are max/mean node load of the window the placement was computed
from (what EPLB balances) and of the next window (what serving then sees).

Expansion: the current placement (ours, on N nodes) meets the next window's load, which has
grown past the per-node threshold, so one node is added (`nodes_needed`); ours rebalances
from the current placement, the baseline repacks from scratch (EPLB-style greedy) and keeps
every expert that happens to stay on a node (optimal node relabelling). Moves are expert
weights copied onto a node. Shrink: one node removed from a cluster with 30% redundancy.

    .venv/bin/python benchmarks/moe_placement.py [--traces 24] [--quick]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import (
    RESULTS_DIR,
    Goal,
    bootstrap_median,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.generative.expansion import (
    EXACT_TIME_LIMIT_S,
    nodes_needed,
    nodes_to_remove,
    rebalance,
    resize,
)
from trifecta.generative.placement import (
    Cluster,
    Placement,
    ScratchRepack,
    eplb_greedy,
    from_scratch,
    place,
    round_robin,
)
from trifecta.generative.placement_anneal import anneal_min_moves
from trifecta.generative.placement_milp import WALL_CAP, min_moves_floor

TOKENS_PER_WINDOW = 16_384 * 8  # tokens x top-k routed choices in one measured window
SHAPES = ((64, 8), (128, 16))  # (experts, nodes)
SMALL_SHAPE = (16, 4)  # small enough for the exact min-move MILP
FLOOR_TIME_LIMIT_S = 20.0  # HiGHS's CPU budget for the exact floor (`resize` gives it 5 s)
GOAL_OF_OPTIMUM = 1.25  # the strict goal that can be met: within 1.25x of the exact minimum
EXPONENTS = (0.8, 1.0, 1.2)
GOAL_IMBALANCE = 1.05
GOAL_MOVE_RATIO = 0.25
CURVE_LEVELS = (1.10, 1.05, 1.02, 1.01, 1.005)
# The search's phases, as `Rebalance.solver` names the one that found the answer's moves.
PHASES = ("greedy", "LNS", "annealing", "node contents", "node contents with counts free")
# The goal rows "moves / exact minimum", one a line: (whose moves, `resize` method, the
# max/mean they reach, its key in `small_figures`). Only shipped rebalances are goals: auto
# (what `resize` runs at this size) and search (what it runs on clusters too large for the
# whole MILP, measured here where the exact minimum is known).
OF_EXACT_MINIMUM = (
    ("ours (resize auto)", "auto", "the repack's max/mean", "equal"),
    ("ours (resize auto)", "auto", "max/mean 1.05", "goal"),
    (
        "annealing + LNS (resize search: what large clusters run)",
        "search",
        "the repack's max/mean",
        "equal",
    ),
    ("annealing + LNS (resize search: what large clusters run)", "search", "max/mean 1.05", "goal"),
)
# The same ratio for the greedy alone: an ablation (what the MILP adds over the descent), a
# note and not a goal, since no `resize` method ships the greedy's answer at this size.
GREEDY_ALONE = (
    ("greedy alone (no MILP)", "greedy", "the repack's max/mean", "equal"),
    ("greedy alone (no MILP)", "greedy", "max/mean 1.05", "goal"),
)


@dataclass
class Trace:
    kind: str
    experts: int
    nodes: int
    exponent: float
    window: np.ndarray  # (E,) token counts of the measured window
    following: np.ndarray  # (E,) the next window's, 15% more tokens


def make_trace(kind: str, experts: int, nodes: int, exponent: float, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, experts + 1) ** exponent
    ranks = rng.permutation(experts)
    now = weights[ranks] / weights.sum()
    if kind == "shift":  # a quarter of the experts trade ranks: the hot set moves
        moved = rng.choice(experts, experts // 4, replace=False)
        ranks[moved] = ranks[rng.permutation(moved)]
    later = weights[ranks] / weights.sum()
    window = rng.multinomial(TOKENS_PER_WINDOW, now).astype(np.float64)
    following = rng.multinomial(int(TOKENS_PER_WINDOW * 1.15), later).astype(np.float64)
    return Trace(kind, experts, nodes, exponent, window, following)


def traces(count: int, shapes: tuple[tuple[int, int], ...]) -> list[Trace]:
    out = []
    for index in range(count):
        experts, nodes = shapes[index % len(shapes)]
        kind = ("zipf", "shift")[(index // len(shapes)) % 2]
        exponent = EXPONENTS[(index // (2 * len(shapes))) % len(EXPONENTS)]
        out.append(make_trace(kind, experts, nodes, exponent, seed=1000 + index))
    return out


def placement_figures(trace: Trace) -> dict[str, float]:
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.10)
    ours = place(trace.window, cluster)
    eplb = eplb_greedy(trace.window, cluster)
    plain = round_robin(trace.experts, cluster)
    return {
        "ours": ours.imbalance(trace.window),
        "eplb": eplb.imbalance(trace.window),
        "round_robin": plain.imbalance(trace.window),
        "ours_next": ours.imbalance(trace.following),
        "eplb_next": eplb.imbalance(trace.following),
        "round_robin_next": plain.imbalance(trace.following),
    }


def expansion_figures(trace: Trace, curve_out: list[list[tuple[int, float]]]) -> dict[str, float]:
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.10)
    current = place(trace.window, cluster, method="greedy")
    # The threshold: the mean node load the cluster was sized for, passed by the new window.
    threshold = trace.window.sum() / trace.nodes * 1.05
    grow = nodes_needed(trace.following.sum(), trace.nodes, threshold, low=threshold / 2)
    add = grow - trace.nodes
    assert add >= 1, "the following window must pass the threshold"
    loads = trace.following
    # Ours is the product's `resize` (auto: the greedy, then the MILP from its answer).
    at_goal = resize(current, loads, add=add, target=GOAL_IMBALANCE)
    scratch = from_scratch(current, loads, at_goal.placement.cluster)
    clock, cpu = time.perf_counter(), time.process_time()
    equal = resize(current, loads, add=add, target=scratch.imbalance)
    equal_seconds, equal_cpu = time.perf_counter() - clock, time.process_time() - cpu
    # Each idea alone at the repack's level: the descent ranking actions by copies made or
    # by moves counted (taking one back refunds it), and the better of the two (`greedy`).
    start = [list(n) for n in current.nodes] + [[] for _ in range(add)]
    cluster_after = at_goal.placement.cluster
    by_copies, by_moves = (
        rebalance(start, loads, cluster_after, scratch.imbalance, by_copies=rank)
        for rank in (True, False)
    )
    greedy_equal = resize(current, loads, add=add, target=scratch.imbalance, method="greedy")
    # Annealing alone from the greedy's answer, for the whole limit (no MILP, no LNS).
    level = max(scratch.imbalance, greedy_equal.imbalance)
    before = [set(n) for n in start]
    annealed = anneal_min_moves(
        before, loads, cluster_after, level, greedy_equal.placement.nodes, EXACT_TIME_LIMIT_S
    )
    # The trade-off curve is the greedy descent's (the MILP gives one point, not a curve).
    full = resize(current, loads, add=add, target=1.0, method="greedy")
    curve_out.append(full.curve)
    # Which phase of the search first reached the strict answer's moves (`Rebalance.solver`).
    won = re.search(r"first reached by (.+)$", equal.solver)
    phase = won.group(1) if won else "greedy"
    return {
        **{f"won_{name}": float(phase == name) for name in PHASES},
        "milp_used_goal": float("MILP (" in at_goal.solver),
        "milp_used_equal": float("MILP (" in equal.solver),
        "lns_used_goal": float(at_goal.solver.startswith("annealing")),
        "lns_used_equal": float(equal.solver.startswith("annealing")),
        "ratio_equal_copies": by_copies.moves / scratch.moves,
        "ratio_equal_refund": by_moves.moves / scratch.moves,
        "ratio_equal_greedy": greedy_equal.moves / scratch.moves,
        "ratio_equal_anneal": annealed.moves / scratch.moves,
        "ours_equal_seconds": equal_seconds,
        "ours_equal_cpu": equal_cpu,
        "added": float(add),
        "before": at_goal.before,
        "ours_goal_moves": float(at_goal.moves),
        "ours_goal_imbalance": at_goal.imbalance,
        "ours_equal_moves": float(equal.moves),
        "ours_equal_imbalance": equal.imbalance,
        "scratch_moves": float(scratch.moves),
        "scratch_imbalance": scratch.imbalance,
        "ratio_goal": at_goal.moves / scratch.moves,
        "ratio_equal": equal.moves / scratch.moves,
        "scratch_x": float(scratch.moves),
    }


def small_figures(trace: Trace) -> dict[str, float]:
    """A small cluster, where `resize`'s auto method solves the exact min-move MILP from the
    greedy's answer (`EXACT_TIME_LIMIT_S`), against the greedy alone and the repack, at 1.05
    and at the repack's own max/mean; and the exact minimum itself (`FLOOR_TIME_LIMIT_S`,
    proven or not, no start), the floor no algorithm can go under at that max/mean."""
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.10)
    current = place(trace.window, cluster, method="greedy")
    loads = trace.following
    figures: dict[str, float] = {}
    grown = Cluster(slots=[*cluster.slots, max(cluster.slots)])
    scratch = from_scratch(current, loads, grown)
    figures["scratch_moves"] = float(scratch.moves)
    before = [set(n) for n in current.nodes] + [set()]
    for name, level in (("goal", GOAL_IMBALANCE), ("equal", scratch.imbalance)):
        for method in ("greedy", "search", "auto"):
            started = time.perf_counter()
            result = resize(current, loads, add=1, target=level, method=method)
            figures[f"{method}_{name}_seconds"] = time.perf_counter() - started
            reached = result.imbalance <= level + 1e-9
            figures[f"{method}_{name}"] = result.moves / scratch.moves if reached else np.inf
            figures[f"{method}_{name}_moves"] = float(result.moves) if reached else np.inf
        floor = min_moves_floor(before, loads, grown, level, FLOOR_TIME_LIMIT_S)
        # Moves are whole: HiGHS's proven lower bound rounds up to the floor no rebalance
        # reaching `level` can go under; its best placement found bounds the minimum above.
        lowest = max(0.0, float(np.ceil(floor.lower_bound - 1e-6)))
        best = float(floor.moves) if floor.moves is not None else np.inf
        figures[f"exact_{name}_proven"] = float(floor.proven)
        figures[f"exact_{name}_floor"] = lowest / scratch.moves
        figures[f"exact_{name}"] = best / scratch.moves
        for method in ("greedy", "search", "auto"):
            ours = figures[f"{method}_{name}_moves"]
            # ours / the exact minimum lies between ours / best found and ours / floor
            figures[f"{method}_over_floor_{name}"] = (
                ours / lowest if lowest > 0 else (1.0 if ours == 0 else np.inf)
            )
            figures[f"{method}_over_best_{name}"] = ours / best if best > 0 else 1.0
    return figures


def shrink_figures(trace: Trace) -> dict[str, float]:
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.30)
    current = place(trace.window, cluster, method="greedy")
    gone = nodes_to_remove(current, 1)
    loads = trace.window * 0.8  # the load fell; one node goes
    at_goal = resize(current, loads, remove=gone, target=GOAL_IMBALANCE)
    scratch = from_scratch(current, loads, at_goal.placement.cluster, gone)
    equal = resize(current, loads, remove=gone, target=scratch.imbalance)
    return {
        "forced": float(at_goal.forced_moves),
        "ours_goal_moves": float(at_goal.moves),
        "ours_goal_imbalance": at_goal.imbalance,
        "ours_equal_moves": float(equal.moves),
        "scratch_moves": float(scratch.moves),
        "scratch_imbalance": scratch.imbalance,
        "ratio_goal": at_goal.moves / scratch.moves,
        "ratio_equal": equal.moves / scratch.moves,
    }


def plot_tradeoff(
    curves: list[list[tuple[int, float]]], scratch: list[tuple[float, float]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = int(max(max(m for m, _ in c) for c in curves) + 1)
    grid = np.arange(horizon + 1)
    # Best max/mean reached with at most k moves, per trace (the curves are Pareto fronts).
    reached = np.array(
        [[min(v for m, v in curve if m <= k) for k in grid] for curve in curves]
    )  # (traces, k)
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.fill_between(
        grid, *np.percentile(reached, [10, 90], axis=0), alpha=0.25, label="greedy descent, 10-90%"
    )
    axis.plot(
        grid, np.median(reached, axis=0), label="greedy descent (ours before the MILP), median"
    )
    moves, levels = [m for m, _ in scratch], [v for _, v in scratch]
    axis.scatter(moves, levels, s=14, c="C3", label="from-scratch repack")
    axis.axhline(GOAL_IMBALANCE, ls="--", c="grey", lw=0.8)
    axis.set_xlabel("experts moved (weights copied onto a node)")
    axis.set_ylabel("max / mean node load")
    axis.set_ylim(0.99, min(1.4, float(reached.max()) + 0.02))
    axis.set_title("Adding a node: moves allowed vs balance reached")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def moves_to_reach(curve: list[tuple[int, float]], level: float) -> float:
    """Moves along a Pareto curve until max/mean <= level (inf when never)."""
    return next((float(m) for m, v in curve if v <= level + 1e-12), float("inf"))


def curve_rows(curves: list[list[tuple[int, float]]], scratch: list[float]) -> list[str]:
    rows = ["| max/mean at most | ours: moves, median [95% CI] | ours / repack moves |"]
    rows.append("|---|---|---|")
    for level in CURVE_LEVELS:
        moves = [moves_to_reach(c, level) for c in curves]
        median, low, high = bootstrap_median(moves)
        ratio = bootstrap_median([m / s for m, s in zip(moves, scratch, strict=True)])
        rows.append(
            f"| {level:g} | {median:.1f} [{low:.1f}, {high:.1f}] "
            f"| {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] |"
        )
    return rows


def _key(prefix: str, level: str) -> str:
    """`exact_floor` + `goal` -> `exact_goal_floor`; otherwise `<prefix>_<level>`."""
    if prefix.endswith("_floor"):
        return f"{prefix.removesuffix('_floor')}_{level}_floor"
    return f"{prefix}_{level}"


def _interval(values: list[float]) -> str:
    if not values:
        return "none"
    median, low, high = bootstrap_median(values)
    return f"{median:.3f} [{low:.3f}, {high:.3f}]"


def _row(name: str, values: list[float], digits: int = 4) -> str:
    median, low, high = bootstrap_median(values)
    return (
        f"| {name} | {median:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] "
        f"| {max(values):.{digits}f} |"
    )


@dataclass
class StrictCase:
    """One large trace's strict expansion: the greedy placement before, the nodes added, and
    the from-scratch repack of the grown cluster whose own max/mean is the level to reach."""

    current: Placement
    add: int
    grown: Cluster
    scratch: ScratchRepack
    level: float


def strict_case(trace: Trace) -> StrictCase:
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.10)
    current = place(trace.window, cluster, method="greedy")
    threshold = trace.window.sum() / trace.nodes * 1.05  # as in `expansion_figures`
    add = nodes_needed(trace.following.sum(), trace.nodes, threshold, threshold / 2) - trace.nodes
    grown = Cluster(slots=[*cluster.slots, *[max(cluster.slots)] * add])
    scratch = from_scratch(current, trace.following, grown)
    return StrictCase(current, add, grown, scratch, scratch.imbalance)


def strict_figures(trace: Trace, budget: float = EXACT_TIME_LIMIT_S) -> dict[str, float]:
    """Only the strict row's figures: `resize` auto (`budget` CPU seconds) and the greedy
    alone, to the repack's own max/mean after one node is added."""
    case = strict_case(trace)
    current, add, scratch, level = case.current, case.add, case.scratch, case.level
    cpu = time.process_time()
    equal = resize(current, trace.following, add=add, target=level, time_limit_s=budget)
    cpu = time.process_time() - cpu
    greedy = resize(current, trace.following, add=add, target=level, method="greedy")
    return {
        "moves": float(equal.moves),
        "scratch_moves": float(scratch.moves),
        "cpu_s": cpu,
        "ratio_equal": equal.moves / scratch.moves,
        "ratio_equal_greedy": greedy.moves / scratch.moves,
        "lns_used_equal": float(equal.solver.startswith("annealing")),
    }


def bound_figures(trace: Trace, seconds: float) -> dict[str, float]:
    """The strict large-cluster row's floor: HiGHS's dual bound on the fewest moves to the
    repack's own max/mean after the node is added (the min-move MILP started from ours, so it
    searches below our answer), over the repack's moves. Above the goal's 0.25, no rebalance
    can meet the strict goal on that trace."""
    case = strict_case(trace)
    current, add, scratch, level = case.current, case.add, case.scratch, case.level
    ours = resize(current, trace.following, add=add, target=level)
    before = [set(n) for n in current.nodes] + [set() for _ in range(add)]
    reached = ours.imbalance <= level + 1e-9  # HiGHS starts only from a feasible answer
    start = ours.placement.nodes if reached else None
    floor = min_moves_floor(before, trace.following, case.grown, level, seconds, start=start)
    lowest = max(0.0, float(np.ceil(floor.lower_bound - 1e-6)))
    best = float(floor.moves) if floor.moves is not None else np.inf
    if reached:
        best = min(best, float(ours.moves))
    return {
        "floor_ratio": lowest / scratch.moves,
        "ours_ratio": ours.moves / scratch.moves,
        "best_ratio": best / scratch.moves,
        "proven": float(floor.proven),
    }


def print_bounds(runs: list[Trace], seconds: float, started: float) -> None:
    """`--only bound`: the strict row's proven floor on every large trace, printed."""
    rows = []
    for trace in runs:
        rows.append(bound_figures(trace, seconds))
        print(
            f"{trace.experts} experts on {trace.nodes} nodes, {trace.kind} {trace.exponent}:",
            ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()),
            flush=True,
        )
    for name in ("floor_ratio", "ours_ratio", "best_ratio"):
        print(f"{name}: {_interval([r[name] for r in rows])}")
    above = sum(r["floor_ratio"] > GOAL_MOVE_RATIO for r in rows)
    proven = int(sum(r["proven"] for r in rows))
    print(
        f"floor above {GOAL_MOVE_RATIO} on {above} of {len(rows)} traces; optimal proven on "
        f"{proven}; HiGHS {seconds:.0f} s a trace; {machine_load()}; "
        f"{time.perf_counter() - started:.0f} s"
    )


def print_strict(runs: list[Trace], started: float, budget: float) -> None:
    rows = []
    for trace in runs:
        rows.append(strict_figures(trace, budget))
        print(
            f"{trace.experts} experts on {trace.nodes} nodes, {trace.kind} {trace.exponent}:",
            ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()),
            flush=True,
        )
    for name in ("ratio_equal", "ratio_equal_greedy"):
        print(f"{name}: {_interval([r[name] for r in rows])}")
    used = int(sum(r["lns_used_equal"] for r in rows))
    print(
        f"LNS answer kept on {used} of {len(rows)}; budget {budget:g} CPU s; "
        f"{machine_load()}; {time.perf_counter() - started:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="64 experts only, 8 traces")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--only",
        choices=("strict", "bound"),
        help="strict: only the large-cluster expansion at the repack's max/mean, printed; "
        "bound: HiGHS's proven floor of that row's moves, printed",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=EXACT_TIME_LIMIT_S,
        help="strict: resize's CPU seconds per rebalance (a budget curve)",
    )
    parser.add_argument(
        "--bound-seconds", type=float, default=60.0, help="bound: HiGHS's CPU seconds per trace"
    )
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    count = 8 if args.quick else args.traces
    started = time.perf_counter()
    runs = traces(count, shapes)
    if args.only == "strict":
        print_strict(runs, time.perf_counter(), args.budget)
        return
    if args.only == "bound":
        print_bounds(runs, args.bound_seconds, time.perf_counter())
        return
    placed = [placement_figures(t) for t in runs]
    curves: list[list[tuple[int, float]]] = []
    grown = [expansion_figures(t, curves) for t in runs]
    shrunk = [shrink_figures(t) for t in runs]
    small = [small_figures(t) for t in traces(max(count // 2, 4), (SMALL_SHAPE,))]
    seconds = time.perf_counter() - started

    def col(rows: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in rows]

    def of_optimum(level: str, side: str = "floor", method: str = "auto") -> list[float]:
        """Our moves / the exact minimum's floor (`side` floor: an upper bound on the ratio)
        or / HiGHS's best placement found (best: a lower bound), every small trace."""
        return col(small, f"{method}_over_{side}_{level}")

    floor = bootstrap_median(col(small, "exact_equal_floor"))
    floor_median = floor[0]
    best = bootstrap_median(col(small, "exact_equal"))
    # Unattainable only if the proven floor itself clears the goal; otherwise say what is known.
    unattainable = floor_median > GOAL_MOVE_RATIO
    proven = {lv: sum(int(r[f"exact_{lv}_proven"]) for r in small) for lv in ("goal", "equal")}
    first = [i for i, t in enumerate(runs) if (t.experts, t.nodes) == shapes[0]]
    plot = RESULTS_DIR / "moe_placement_tradeoff.png"
    RESULTS_DIR.mkdir(exist_ok=True)
    plot_tradeoff(
        [curves[i] for i in first],
        [(grown[i]["scratch_moves"], grown[i]["scratch_imbalance"]) for i in first],
        plot,
    )
    small_shape = f"{SMALL_SHAPE[0]} experts on {SMALL_SHAPE[1]} nodes"
    goals = [
        Goal.of(
            "max/mean load, 10% redundant slots (median over traces)",
            bootstrap_median(col(placed, "ours")),
            at_most=GOAL_IMBALANCE,
        ),
        Goal.of(
            "max/mean load, 10% redundant slots (worst trace)",
            max(col(placed, "ours")),
            at_most=GOAL_IMBALANCE,
        ),
        Goal.of(
            "moves per expansion / from-scratch repack's, both reaching max/mean <= 1.05",
            bootstrap_median(col(grown, "ratio_goal")),
            at_most=GOAL_MOVE_RATIO,
        ),
        Goal.of(
            "moves per expansion / repack's, ours reaching the repack's own max/mean "
            "(strict; no exact floor at 64-128 experts)",
            bootstrap_median(col(grown, "ratio_equal")),
            at_most=GOAL_MOVE_RATIO,
        ),
        *[
            Goal.of(
                f"{small_shape}, {who}: moves / exact minimum at {level} "
                "(at most: over the proven floor)",
                bootstrap_median(of_optimum(key, method=method)),
                at_most=GOAL_OF_OPTIMUM,
                unit="x",
            )
            for who, method, level, key in OF_EXACT_MINIMUM
        ],
    ]
    # Figures that are no goal, shown beside the goals with the reason.
    notes = [
        (
            f"{small_shape}, exact min-move MILP ({FLOOR_TIME_LIMIT_S:.0f} s): moves / "
            "repack's at its max/mean, best placement found (proven floor "
            f"{floor_median:.2f})",
            best,
            "",
            "a property of the instances, not of a rebalance: "
            + (
                f"its proven floor is above {GOAL_MOVE_RATIO}, so no algorithm meets a quarter "
                "of the repack's moves here; the goal held to it is ours within "
                f"{GOAL_OF_OPTIMUM}x of this minimum (the rows above)"
                if unattainable
                else f"its proven floor is under {GOAL_MOVE_RATIO}; ours is held to within "
                f"{GOAL_OF_OPTIMUM}x of this minimum (the rows above)"
            ),
        ),
        *[
            (
                f"{small_shape}, {who}: moves / exact minimum at {level} (over the proven floor)",
                bootstrap_median(of_optimum(key, method=method)),
                "x",
                "an ablation (what the exact MILP adds over the greedy descent): no `resize` "
                "method ships the greedy's answer at this size",
            )
            for who, method, level, key in GREEDY_ALONE
        ],
    ]
    note_rows = [
        "| note, not a goal | figure | 95% interval | why not a goal |",
        "|---|---:|---|---|",
        *[
            f"| {claim} | {fig:.4f}{unit} | [{low:.4f}, {high:.4f}] | {why} |"
            for claim, (fig, low, high), unit, why in notes
        ],
    ]
    command = "python benchmarks/moe_placement.py" + (" --quick" if args.quick else "")
    if not args.no_write:
        write_results("moe_placement", command, goals)
    shape_text = ", ".join(f"{e} experts on {n} nodes" for e, n in shapes)
    lines = [
        "## MoE expert placement and node expansion (`benchmarks/moe_placement.py`)",
        "",
        f"`{command}` on {cpu_name()} ({machine_load()}; other engineers were using the",
        f"machine, which only moves the wall time, {seconds:.0f} s). {len(runs)} traces",
        f"({shape_text}; Zipf exponents {', '.join(map(str, EXPONENTS))}; half with a moving",
        "hot set), each a measured window and the next one (15% more tokens). Medians with",
        "95% bootstrap intervals over traces, and the worst trace.",
        "",
        *goals_markdown(goals, digits=4),
        "",
        "Beside the goals, three figures that are not goals (their reasons in the last "
        "column). The greedy alone",
        "is an ablation: no method ships it at this size. The exact MILP's own ratio to the "
        "repack's moves",
        "is a property of the instances rather than of a rebalance: when its proven floor is "
        f"above {GOAL_MOVE_RATIO}, a",
        "goal of a quarter of the repack's moves cannot be met there by any algorithm, and an "
        "unattainable goal",
        "is no goal. It is restated against the proven optimum instead: ours within "
        f"{GOAL_OF_OPTIMUM}x of the exact",
        "minimum (the ratios over the proven floor above, which can only overstate it).",
        "",
        *note_rows,
        "",
        "How to read the move goals. Ours is the product's `resize` (method auto): the greedy",
        "descent, then within a "
        f"{EXACT_TIME_LIMIT_S:g} s CPU budget (this process's CPU seconds, so other jobs' load "
        f"does not shorten it; wall time capped at {WALL_CAP * EXACT_TIME_LIMIT_S:g} s) the",
        "min-move MILP (HiGHS) started from the greedy's",
        "answer (16 experts on 5 nodes; larger clusters skip it), or a search: a large-",
        "neighbourhood search (LNS, Shaw 1998:",
        "three nodes at a time re-solved exactly by the same MILP; a fifth of the budget left,",
        "or to its local minimum), simulated annealing from its answer (numba-compiled, a",
        "quarter of the rest; half its proposals send a replica back to a node that held it), "
        "then every",
        "node at once for its answer's replica counts (a set partitioning program over node",
        "contents: a node's old experts less up to 3 plus up to 2 others, or 1 at 128 experts,",
        "in the load window; its relaxation, reduced-cost fixing, then HiGHS's branch and bound)",
        "and the LNS on what that leaves, kept only when it moves fewer",
        "experts. Each phase's share of the CPU left comes with the same share of the wall "
        "time left, so a loaded machine shortens every phase alike. The phase that first "
        "reached the strict answer's moves, per trace: "
        + ", ".join(
            f"{name} {int(sum(col(grown, f'won_{name}')))}"
            for name in PHASES
            if sum(col(grown, f"won_{name}"))
        )
        + ". On the",
        f"large clusters the MILP's answer was kept on {int(sum(col(grown, 'milp_used_goal')))} "
        f"of {len(runs)} traces at {GOAL_IMBALANCE} and on "
        f"{int(sum(col(grown, 'milp_used_equal')))} at the repack's max/mean, the annealing "
        "and LNS's on "
        f"{int(sum(col(grown, 'lns_used_goal')))} and "
        f"{int(sum(col(grown, 'lns_used_equal')))}; elsewhere the greedy's answer stands.",
        "The issue's goal is a quarter of the repack's moves at equal max/mean, with its own",
        f"target of {GOAL_IMBALANCE}: read there, it is "
        f"{goals[2].verdict()} on the large clusters (the third goal row). Read strictly at",
        f"the repack's own max/mean (about 1.001, the fourth) it is {goals[3].verdict()}. "
        "On the small clusters the",
        f"exact min-move MILP (HiGHS, {FLOOR_TIME_LIMIT_S:.0f} s per instance, no start; "
        f"optimality proven on {proven['equal']} of",
        f"{len(small)} traces at that level) found placements needing a median {best[0]:.2f} of "
        "the repack's",
        f"moves, and proved that none needs fewer than {floor_median:.2f}: "
        + (
            "so no algorithm can meet the strict goal read as the median over these "
            "instances (a note above, not a goal)."
            if unattainable
            else "the floor it proved is under the goal, so whether some placement meets the "
            "strict goal there is open (a note above: the goal held to it is ours within "
            f"{GOAL_OF_OPTIMUM}x of the minimum)."
        ),
        "The strict goal that measures our rebalance is how close it comes to the exact",
        f"minimum, within {GOAL_OF_OPTIMUM}x of it (the last four goal rows divide by the "
        "proven floor, so they can only",
        f"overstate the ratio; optimality was proven on {proven['goal']} of {len(small)} traces "
        f"at {GOAL_IMBALANCE}). The first two of them are",
        "the product (at this size it solves the exact MILP); the last two are what clusters "
        "too large for the",
        "whole MILP run (`resize` method search: the greedy, then annealing and the LNS, the "
        "same budget), measured here",
        "where the exact minimum is known. The greedy alone, where larger clusters start from, "
        "is in the notes.",
        "",
        "Each idea alone, on the large clusters at the repack's max/mean (moves / the "
        "repack's, median [95% CI]):",
        "",
        "| rebalance | moves / repack's |",
        "|---|---|",
        "| greedy descent, actions ranked by weights copied (the previous rebalance; moves "
        f"counted from the start placement) | {_interval(col(grown, 'ratio_equal_copies'))} |",
        "| greedy descent, actions ranked by moves counted (taking a copy back refunds it) "
        f"| {_interval(col(grown, 'ratio_equal_refund'))} |",
        f"| greedy: the better of the two | {_interval(col(grown, 'ratio_equal_greedy'))} |",
        "| greedy, then annealing alone for the whole "
        f"{EXACT_TIME_LIMIT_S:g} s of CPU | {_interval(col(grown, 'ratio_equal_anneal'))} |",
        "| ours: greedy, then the LNS, annealing, the node-content program and the "
        "LNS (`resize` auto; at 055f912, with the MILP first at 64 experts and the earlier "
        "shares, 0.274 [0.223, 0.309] at load 7-18) "
        f"| {_interval(col(grown, 'ratio_equal'))} |",
        "",
        "Measured during development and not shipped: a local search after the descent that "
        "takes back",
        "moves the level does not need (drop a copied replica, put back a node's old expert, "
        "send a copy",
        "home) took back no move on 6 small and 4 large traces, at either level. LNS "
        "neighbourhoods of 4 nodes",
        "(HiGHS often cut by the 0.5 s sub-problem limit at the strict level) and of 2 "
        "(too little freed) ended at",
        "as many moves as 3 or more on each of four development traces; the MILP restricted "
        "to the current, greedy and repack replica counts",
        "(the previous answer above 64 experts on 9 nodes) was replaced by the LNS alone.",
        "Tried on development traces (other seeds) at 5 CPU seconds and not kept, none beyond "
        "the search's",
        "run-to-run spread (13 to 16 moves on one trace, same code): LNS neighbourhoods of 12 "
        "experts freed on every",
        "node around a moved replica (moves summed 104 against 98 on 5 traces), sideways "
        "steps at equal moves toward",
        "a lighter heaviest node (42 against 39 on 2), the time after the first LNS leg as "
        "three rounds of annealing",
        "and the LNS (from the best answer: 87 against 87 on 4; each from the first leg's: "
        "157 against 160 on 7).",
        "Nor is a larger budget: on 5 of them, moves summed 118 at 1 CPU second, 98 and 106 in "
        "two runs at 5, 98 at 15, 96 at 30.",
        "What changed the search: the node-content program after annealing, on 10 development "
        "expansions (5 CPU s, load 8-11; annealing half the rest on 4, 30% on 6), moves "
        "summed 228 against 244 for the previous search in alternated pairs (fewer on 7, "
        "equal on 2, one more on 1); run first, from the greedy's answer, it lost (half the "
        "budget: 152 against 145 on 6), and with only "
        "the rest of the budget it rarely finishes its branch and bound (the relaxation and "
        "the enumeration take about 1 CPU s at 64-128 experts).",
        "The wall split (e65ba4b; the strict row was 0.274 [0.223, 0.309] at 055f912): a "
        "budget part takes its share of the wall time left as well as of the CPU left, so "
        "under the wall cap a loaded run no longer spends it all in the first phases; `auto` "
        "skips the whole MILP at 64 experts on 9 nodes (it took half the budget and its "
        "answer was kept on 0 of 12 strict traces); the LNS first gets a fifth, annealing a "
        "quarter of the rest, the node-content program the remainder. Paired against the "
        "search before it, alternated per trace on these 24 traces (5 CPU s budget, nice 10, "
        "load 9-10, 1.5 CPU s a rebalance got past the wall cap): moves summed 714 against "
        "1017, 0.70x [0.60, 0.84] (fewer on 16, equal on 5, more on 3); with the counts-free "
        "program also run after it (load 8-11, 3.2 CPU s a rebalance): 648 against 681, 0.95x "
        "[0.83, 1.06] (fewer on 7, equal on 5, more on 12), no difference shown. That program, "
        "the hot experts' replica counts free (one more or fewer; exact against the min-move "
        "MILP over the same counts on 12-expert instances, tested), found 25 moves where the "
        "fixed counts' optimum was 33 on the second trace given 19 CPU s, but within 5 s it "
        "ran on 8 of 24 traces and won on none; at 20 CPU s a rebalance (vary 10 against 0, "
        "alternated, the first 8 traces, load 6-7) 160 moves summed against 153 (fewer on 2, "
        "equal on 3, more on 3): it ships off, behind the `rebalance_vary_counts` setting "
        "(default 0).",
        "",
        "Placement, max/mean node load (10% redundant slots):",
        "",
        "| placement | median [95% CI] | worst |",
        "|---|---|---|",
        _row("ours: water-filling + LPT + local search (+ MILP when small)", col(placed, "ours")),
        _row("EPLB-style greedy (replicate, LPT)", col(placed, "eplb")),
        _row("round-robin, no replicas", col(placed, "round_robin")),
        _row("ours, on the next window", col(placed, "ours_next")),
        _row("EPLB-style greedy, on the next window", col(placed, "eplb_next")),
        _row("round-robin, on the next window", col(placed, "round_robin_next")),
        "",
        "Adding a node (the next window passes the per-node threshold):",
        "",
        "| figure | median [95% CI] | worst |",
        "|---|---|---|",
        _row("max/mean before rebalancing (new node empty)", col(grown, "before")),
        _row("ours: moves to reach 1.05", col(grown, "ours_goal_moves"), 1),
        _row("ours: max/mean reached", col(grown, "ours_goal_imbalance")),
        _row("ours: moves to reach the repack's max/mean", col(grown, "ours_equal_moves"), 1),
        _row(
            "ours: seconds per rebalance to the repack's max/mean (resize auto, both greedy "
            "rankings included)",
            col(grown, "ours_equal_seconds"),
            1,
        ),
        _row(
            "ours: CPU seconds of this process per rebalance to the repack's max/mean (the "
            f"budget {EXACT_TIME_LIMIT_S:g} s; less: the wall cap cut it)",
            col(grown, "ours_equal_cpu"),
            1,
        ),
        _row("from-scratch repack: moves", col(grown, "scratch_moves"), 1),
        _row("from-scratch repack: max/mean", col(grown, "scratch_imbalance")),
        "",
        "The trade-off along the rebalance (each trace's curve: the best max/mean reached",
        "within k moves, on a run toward max/mean 1.0), against the repack's moves:",
        "",
        *curve_rows(curves, col(grown, "scratch_moves")),
        "",
        f"Small clusters ({SMALL_SHAPE[0]} experts on {SMALL_SHAPE[1]} nodes, {len(small)} "
        "traces), where `resize` solves the exact min-move MILP from the greedy's answer "
        f"(HiGHS, a {EXACT_TIME_LIMIT_S:g} s CPU budget; median",
        f"{np.median(col(small, 'auto_equal_seconds')):.1f} s per rebalance at the repack's "
        "max/mean, greedy included), and the exact minimum itself with a longer limit:",
        "moves as a share of the repack's (inf: the level was not reached)",
        "",
        "| rebalance | at max/mean 1.05 | at the repack's max/mean |",
        "|---|---|---|",
        *[
            f"| {label} | {_interval(col(small, _key(key, 'goal')))} "
            f"| {_interval(col(small, _key(key, 'equal')))} |"
            for label, key in (
                ("greedy", "greedy"),
                (f"greedy + annealing + LNS (search, {EXACT_TIME_LIMIT_S:g} s)", "search"),
                (f"ours: greedy + exact MILP (auto, {EXACT_TIME_LIMIT_S:g} s)", "auto"),
                (f"exact MILP ({FLOOR_TIME_LIMIT_S:.0f} s): best placement found", "exact"),
                (f"exact MILP ({FLOOR_TIME_LIMIT_S:.0f} s): proven floor", "exact_floor"),
            )
        ],
        "",
        "Moves over the exact minimum lie between moves over the MILP's best placement and "
        "over its proven",
        "floor (equal where optimality is proven): "
        + "; ".join(
            f"{who} at {label} between {_interval(of_optimum(key, 'best', method))} and "
            f"{_interval(of_optimum(key, method=method))}"
            for who, method in (
                ("ours", "auto"),
                ("the greedy alone", "greedy"),
                ("annealing + LNS", "search"),
            )
            for label, key in (("max/mean 1.05", "goal"), ("the repack's max/mean", "equal"))
        )
        + ".",
        "",
        "Removing a node (30% redundant slots, 20% less load):",
        "",
        "| figure | median [95% CI] | worst |",
        "|---|---|---|",
        _row("forced moves (experts whose only replica was there)", col(shrunk, "forced"), 1),
        _row("ours: moves to reach 1.05", col(shrunk, "ours_goal_moves"), 1),
        _row("ours: moves to reach the repack's max/mean", col(shrunk, "ours_equal_moves"), 1),
        _row("from-scratch repack: moves", col(shrunk, "scratch_moves"), 1),
        _row("ours / repack moves, at 1.05", col(shrunk, "ratio_goal")),
        _row("ours / repack moves, at the repack's max/mean", col(shrunk, "ratio_equal")),
        "",
        f"Trade-off curve ({shape_text.split(',')[0]}, every trace): "
        "[results/moe_placement_tradeoff.png](benchmarks/results/moe_placement_tradeoff.png).",
    ]
    if not args.no_write:
        write_section("moe_placement", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
