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
    nodes_needed,
    nodes_to_remove,
    resize,
)
from trifecta.generative.placement import (
    Cluster,
    eplb_greedy,
    from_scratch,
    place,
    round_robin,
)

TOKENS_PER_WINDOW = 16_384 * 8  # tokens x top-k routed choices in one measured window
SHAPES = ((64, 8), (128, 16))  # (experts, nodes)
SMALL_SHAPE = (16, 4)  # small enough for the exact min-move MILP
EXPONENTS = (0.8, 1.0, 1.2)
GOAL_IMBALANCE = 1.05
GOAL_MOVE_RATIO = 0.25
CURVE_LEVELS = (1.10, 1.05, 1.02, 1.01, 1.005)


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
    at_goal = resize(current, loads, add=add, target=GOAL_IMBALANCE)
    scratch = from_scratch(current, loads, at_goal.placement.cluster)
    equal = resize(current, loads, add=add, target=scratch.imbalance)
    full = resize(current, loads, add=add, target=1.0)
    curve_out.append(full.curve)
    return {
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
    """A small cluster, where `resize`'s auto method also solves the exact min-move MILP
    (2 s HiGHS limit), against the greedy alone and the repack, at 1.05 and at the repack's
    own max/mean."""
    cluster = Cluster.with_redundancy(trace.nodes, trace.experts, 0.10)
    current = place(trace.window, cluster, method="greedy")
    loads = trace.following
    figures: dict[str, float] = {}
    scratch = from_scratch(current, loads, Cluster(slots=[*cluster.slots, max(cluster.slots)]))
    figures["scratch_moves"] = float(scratch.moves)
    for name, level in (("goal", GOAL_IMBALANCE), ("equal", scratch.imbalance)):
        for method in ("greedy", "auto"):
            result = resize(current, loads, add=1, target=level, method=method)
            reached = result.imbalance <= level + 1e-9
            figures[f"{method}_{name}"] = result.moves / scratch.moves if reached else np.inf
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
        grid, *np.percentile(reached, [10, 90], axis=0), alpha=0.25, label="ours, 10-90%"
    )
    axis.plot(grid, np.median(reached, axis=0), label="ours (min-move rebalance), median")
    axis.scatter(*zip(*scratch, strict=True), s=14, c="C3", label="from-scratch repack")
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


def _interval(values: list[float]) -> str:
    median, low, high = bootstrap_median(values)
    return f"{median:.3f} [{low:.3f}, {high:.3f}]"


def _row(name: str, values: list[float], digits: int = 4) -> str:
    median, low, high = bootstrap_median(values)
    return (
        f"| {name} | {median:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] "
        f"| {max(values):.{digits}f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="64 experts only, 8 traces")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    count = 8 if args.quick else args.traces
    started = time.perf_counter()
    runs = traces(count, shapes)
    placed = [placement_figures(t) for t in runs]
    curves: list[list[tuple[int, float]]] = []
    grown = [expansion_figures(t, curves) for t in runs]
    shrunk = [shrink_figures(t) for t in runs]
    small = [small_figures(t) for t in traces(max(count // 2, 4), (SMALL_SHAPE,))]
    seconds = time.perf_counter() - started

    def col(rows: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in rows]

    first = [i for i, t in enumerate(runs) if (t.experts, t.nodes) == shapes[0]]
    plot = RESULTS_DIR / "moe_placement_tradeoff.png"
    RESULTS_DIR.mkdir(exist_ok=True)
    plot_tradeoff(
        [curves[i] for i in first],
        [(grown[i]["scratch_moves"], grown[i]["scratch_imbalance"]) for i in first],
        plot,
    )
    goals = [
        Goal(
            claim="max/mean load, 10% redundant slots (median over traces)",
            figure=(m := bootstrap_median(col(placed, "ours")))[0],
            low=m[1],
            high=m[2],
            goal=GOAL_IMBALANCE,
            direction="at most",
        ),
        Goal(
            claim="max/mean load, 10% redundant slots (worst trace)",
            figure=max(col(placed, "ours")),
            goal=GOAL_IMBALANCE,
            direction="at most",
        ),
        Goal(
            claim="moves per expansion / from-scratch repack's, both reaching max/mean <= 1.05",
            figure=(r := bootstrap_median(col(grown, "ratio_goal")))[0],
            low=r[1],
            high=r[2],
            goal=GOAL_MOVE_RATIO,
            direction="at most",
        ),
        Goal(
            claim="moves per expansion / repack's, ours reaching the repack's own max/mean",
            figure=(q := bootstrap_median(col(grown, "ratio_equal")))[0],
            low=q[1],
            high=q[2],
            goal=GOAL_MOVE_RATIO,
            direction="at most",
        ),
        Goal(
            claim="16 experts on 4 nodes, greedy + exact MILP: moves / repack's at its max/mean",
            figure=(x := bootstrap_median(col(small, "auto_equal")))[0],
            low=x[1],
            high=x[2],
            goal=GOAL_MOVE_RATIO,
            direction="at most",
        ),
    ]
    command = "python benchmarks/moe_placement.py" + (" --quick" if args.quick else "")
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
        "The two goals at the repack's own max/mean (about 1.001) are not met: matching its",
        "near-perfect balance needs most of the replica counts and packing it chose, and",
        "every added replica is itself a move. On the small clusters the exact min-move MILP",
        "(under its 2 s limit, so not always proven optimal) still needs 0.4-0.9 of the",
        "repack's moves there; the goal of a quarter holds at 1.05 on the large clusters.",
        "The curve table below gives the price of each level of balance in moves.",
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
        _row("from-scratch repack: moves", col(grown, "scratch_moves"), 1),
        _row("from-scratch repack: max/mean", col(grown, "scratch_imbalance")),
        "",
        "The trade-off along the rebalance (each trace's curve: the best max/mean reached",
        "within k moves, on a run toward max/mean 1.0), against the repack's moves:",
        "",
        *curve_rows(curves, col(grown, "scratch_moves")),
        "",
        f"Small clusters ({SMALL_SHAPE[0]} experts on {SMALL_SHAPE[1]} nodes, {len(small)} "
        "traces), where `resize` also solves the exact min-move MILP (HiGHS, 2 s limit):",
        "moves as a share of the repack's (inf: the level was not reached)",
        "",
        "| rebalance | at max/mean 1.05 | at the repack's max/mean |",
        "|---|---|---|",
        *[
            f"| {label} | {_interval(col(small, key + '_goal'))} "
            f"| {_interval(col(small, key + '_equal'))} |"
            for label, key in (("greedy", "greedy"), ("greedy + exact MILP (auto)", "auto"))
        ],
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
    write_section("moe_placement", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
