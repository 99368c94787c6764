"""Rendering an `EvalReport`: the table (Markdown and Rich), the goals, and the PNG plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from trifecta.cognitive.bootstrap import Interval
from trifecta.cognitive.evaluation import LIVE, EvalConfig, EvalReport, Point

GOAL_ACCURACY = 0.95  # of the largest tier's accuracy ...
GOAL_COST = 0.40  # ... at no more than this share of its compute cost


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _operating_point(config: EvalConfig) -> str:
    if config.operating_point == "accurate":
        return "the most accurate configuration within the budget"
    if config.operating_point == "budget":
        return (
            f"the most accurate configuration whose compute stays within {config.budget:.0%} of "
            "the largest tier's by the upper end of its bootstrap 95% interval on that sample "
            "(the product's calibration target)"
        )
    return (
        f"the cheapest configuration that keeps {config.keep_accuracy:.0%} of the largest "
        "tier's accuracy by the lower end of its bootstrap 95% interval on that sample (the "
        "product's calibration target)"
    )


def goals(report: EvalReport) -> list[tuple[str, bool, str]]:
    """(goal, met, the measured figures) for each of the issue's goals. A goal is met only
    when its bootstrap 95% interval clears it (without intervals: the point estimate)."""
    large = report.point(f"always {report.tiers[-1]}")
    live = report.point(LIVE)
    random = report.point("random escalation")
    gap = {g.method: g for g in report.gap}
    relative = live.accuracy / large.accuracy if large.accuracy else 0.0
    ci = report.intervals.get(LIVE)
    if ci is not None:
        first = ci.relative_accuracy.low >= GOAL_ACCURACY and ci.cost_share.high <= GOAL_COST
        first_figures = (
            f"{relative:.1%} {_ci(ci.relative_accuracy)} of its accuracy "
            f"({_pct(live.accuracy)} vs {_pct(large.accuracy)}) at {_pct(live.cost_share)} "
            f"{_ci(ci.cost_share)} of its compute; the largest tier answers "
            f"{_pct(live.large_share)} of requests and {_pct(report.needed_reached)} of those "
            "only it solves"
        )
    else:
        first = relative >= GOAL_ACCURACY and live.cost_share <= GOAL_COST
        first_figures = f"{relative:.1%} of its accuracy at {_pct(live.cost_share)} of its compute"
    baseline = report.apgr_baseline or "router"
    margin = report.apgr_margin
    third = margin.low > 0 if margin is not None else gap["cascade"].apgr > gap[baseline].apgr
    apgr_ci = {m: _ci(g.apgr, digits=3) for m, g in report.gap_intervals.items()}
    third_figures = ", ".join(
        f"{g.method} {g.apgr:.3f} {apgr_ci.get(g.method, '')}".rstrip() for g in report.gap
    ) + (f"; cascade minus {baseline}: {_ci(margin, digits=3)}" if margin is not None else "")
    return [
        (
            f">= {GOAL_ACCURACY:.0%} of the largest tier's accuracy "
            f"at <= {GOAL_COST:.0%} of its compute",
            first,
            first_figures,
        ),
        (
            "strictly better than random escalation at the same rates",
            live.accuracy > random.accuracy + 2 * random.spread,
            f"{_pct(live.accuracy)} vs {_pct(random.accuracy)} ± {_pct(random.spread)} "
            "(sd of 20 draws)",
        ),
        (
            f"APGR above the best baseline router's (here: {baseline}), training-free",
            third,
            third_figures,
        ),
    ]


def _ci(value: Interval | None, digits: int = 0) -> str:
    if value is None or value.low != value.low:  # NaN: no interval
        return ""
    if digits:
        return f"[{value.low:.{digits}f}, {value.high:.{digits}f}]"
    return f"[{100 * value.low:.1f}, {100 * value.high:.1f}]%"


def _share(value: float, of: float) -> float | None:
    return value / of if of else None


def points_markdown(report: EvalReport) -> str:
    large = report.point(f"always {report.tiers[-1]}")
    lines = [
        "| policy | accuracy | of largest tier's accuracy | compute cost (of largest) "
        "| USD cost (of largest) | reaches largest tier | setting |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in report.points:
        ci = report.intervals.get(p.method)
        spread = f" ± {_pct(p.spread)}" if p.spread else ""
        lines.append(
            f"| {p.method} | {_pct(p.accuracy)}{spread} {_ci(ci.accuracy if ci else None)} "
            f"| {_pct(_share(p.accuracy, large.accuracy))} "
            f"{_ci(ci.relative_accuracy if ci else None)} "
            f"| {_pct(p.cost_share)} {_ci(ci.cost_share if ci else None)} "
            f"| {_pct(p.usd_share)} {_ci(ci.usd_share if ci else None)} "
            f"| {_pct(p.large_share)} | {p.detail} |"
        )
    return "\n".join(lines)


def gap_markdown(report: EvalReport) -> str:
    lines = ["| policy | APGR | CPT(50%) | CPT(80%) |", "|---|---|---|---|"]
    for g in report.gap:
        ci = report.gap_intervals.get(g.method)
        lines.append(
            f"| {g.method} | {g.apgr:.3f} {_ci(ci.apgr if ci else None, digits=3)} "
            f"| {_pct(g.cpt50)} {_ci(ci.cpt50 if ci else None)} "
            f"| {_pct(g.cpt80)} {_ci(ci.cpt80 if ci else None)} |"
        )
    return "\n".join(lines)


def auroc_markdown(report: EvalReport) -> str:
    header = "| aggregate | " + " | ".join(report.tiers) + " |"
    lines = [header, "|---" * (len(report.tiers) + 1) + "|"]
    for aggregate, row in report.aurocs.items():
        lines.append(f"| {aggregate} | " + " | ".join(f"{row[t]:.3f}" for t in report.tiers) + " |")
    return "\n".join(lines)


def grades_markdown(report: EvalReport) -> str:
    grades = sorted(next(iter(report.accuracy_by_grade.values())))
    lines = [
        "| tier | " + " | ".join(f"grade {g}" for g in grades) + " |",
        "|---" * (len(grades) + 1) + "|",
    ]
    for tier, row in report.accuracy_by_grade.items():
        lines.append(f"| {tier} | " + " | ".join(_pct(row[g]) for g in grades) + " |")
    return "\n".join(lines)


def goals_markdown(report: EvalReport) -> str:
    return "\n".join(
        f"- {'met' if met else '**not met**'}: {goal}: {figures}"
        for goal, met, figures in goals(report)
    )


def markdown(report: EvalReport) -> str:
    c = report.config
    return "\n\n".join(
        [
            f"Held-out tasks in the default capsule mix: {c.calibration_tasks} to calibrate, "
            f"{c.eval_tasks} to report on; the routers learn from {c.router_tasks} "
            "train-split tasks. Intervals: bootstrap 95% over the evaluation tasks "
            f"({c.bootstrap} draws; CPT counts a draw that never recovers the gap as 100%). "
            f"Signal `{report.thresholds.aggregate}` (window {report.thresholds.window}); "
            f"budget {c.budget:.0%} of the largest tier's compute; each policy's operating "
            f"point, chosen on the calibration sample: {_operating_point(c)}; "
            f"seed {c.seed}.",
            f"`{LIVE}` is the policy the product serves, run for real (the `EscalationCascade` "
            "with early stopping): "
            + (
                "the shipped start router (`start_router.py`, the structural features) picks "
                "each request's first tier and the entropy cascade escalates from there, "
                if report.thresholds.router
                else "the entropy cascade from the smallest tier, "
            )
            + "with the cut-offs and thresholds the product's own calibration "
            "(`trifecta cognitive calibrate`) fits on the calibration sample; its replay on the "
            f"same tasks gives {_pct(report.extras.get('replayed accuracy'))} at "
            f"{_pct(report.extras.get('replayed cost share'))} of the compute (the live run "
            f"{'makes the same decisions' if report.live_agrees else 'differs from the replay'}"
            "; stopping early only saves tokens).",
            points_markdown(report),
            "RouteLLM's metrics (x-axis: share of requests reaching the largest tier):",
            gap_markdown(report),
            "Failure-prediction AUROC of each signal aggregate "
            "(how well it ranks wrong answers first):",
            auroc_markdown(report),
            "Held-out accuracy per grade:",
            grades_markdown(report),
            "Goals:",
            goals_markdown(report),
        ]
    )


def points_table(report: EvalReport) -> Table:
    large = report.point(f"always {report.tiers[-1]}")
    table = Table(title="accuracy against compute cost (held-out tasks)")
    for column in (
        "policy",
        "accuracy",
        "of largest",
        "compute",
        "USD",
        "reach largest",
        "setting",
    ):
        table.add_column(column, justify="left" if column in ("policy", "setting") else "right")
    for p in report.points:
        table.add_row(
            p.method,
            _pct(p.accuracy) + (f" ± {_pct(p.spread)}" if p.spread else ""),
            _pct(_share(p.accuracy, large.accuracy)),
            _pct(p.cost_share),
            _pct(p.usd_share),
            _pct(p.large_share),
            p.detail,
        )
    return table


def gap_table(report: EvalReport) -> Table:
    table = Table(title="RouteLLM metrics (x: share of requests reaching the largest tier)")
    for column in ("policy", "APGR", "CPT(50%)", "CPT(80%)"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for g in report.gap:
        table.add_row(g.method, f"{g.apgr:.3f}", _pct(g.cpt50), _pct(g.cpt80))
    return table


def plot(report: EvalReport, path: Path) -> Path:
    """Accuracy against compute cost, one curve per policy and a marker per fixed point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5))
    for method, curve in report.curves.items():
        xs, ys = zip(*sorted(curve), strict=True) if curve else ((), ())
        axes.plot([100 * x for x in xs], [100 * y for y in ys], marker=".", label=method)
    fixed: list[Point] = [
        p for p in report.points if p.method.startswith("always") or p.method == "oracle"
    ]
    for p in fixed:
        axes.scatter([100 * p.cost_share], [100 * p.accuracy], marker="s", zorder=3)
        axes.annotate(
            p.method,
            (100 * p.cost_share, 100 * p.accuracy),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    live = report.point(LIVE)
    axes.scatter(
        [100 * live.cost_share],
        [100 * live.accuracy],
        marker="*",
        s=160,
        zorder=4,
        label="auto (live: the product's operating point)",
    )
    axes.axvline(100 * report.config.budget, linestyle=":", color="grey")
    axes.set_xlabel("compute cost, % of always calling the largest tier")
    axes.set_ylabel("accuracy on held-out tasks, %")
    axes.set_title("Entropy escalation against a trained router")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
