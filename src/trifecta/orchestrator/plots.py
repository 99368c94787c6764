"""The run report's plots (PNG, matplotlib's Agg back end, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trifecta.orchestrator.models import TaskResult
from trifecta.orchestrator.report import ROUTES, RunReport

COLOURS = {"cache": "#7f7f7f", "edge": "#2ca02c", "cognitive": "#1f77b4", "all": "#222222"}


def latency_plot(results: list[TaskResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [[r.latency_ms for r in results if r.route == route] for route in ROUTES]
    shown = [(route, d) for route, d in zip(ROUTES, data, strict=True) if d]
    ax.boxplot(
        [d for _, d in shown], tick_labels=[f"{r}\n(n={len(d)})" for r, d in shown], showfliers=True
    )
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end latency (ms, log scale)")
    ax.set_title("Latency by route")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_plot(report: RunReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    grades = sorted(report.accuracy_by_grade, key=int)
    routes = [r for r in (*ROUTES, "all") if any(r in report.accuracy_by_grade[g] for g in grades)]
    width = 0.8 / max(1, len(routes))
    for i, route in enumerate(routes):
        xs = [
            int(g) + (i - (len(routes) - 1) / 2) * width
            for g in grades
            if route in report.accuracy_by_grade[g]
        ]
        ys = [
            report.accuracy_by_grade[g][route]
            for g in grades
            if route in report.accuracy_by_grade[g]
        ]
        ax.bar(xs, ys, width=width, label=route, color=COLOURS.get(route))
    ax.set_xlabel("task grade (1-2 light, 5 hardest)")
    ax.set_ylabel("verified accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy by grade and route")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cost_plot(report: RunReport, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = report.cost.kinds
    xs = range(len(kinds))
    ax.bar(
        [x - 0.27 for x in xs],
        [k.month_at_demand for k in kinds],
        width=0.27,
        label="measured, at declared demand",
    )
    ax.bar(list(xs), [k.plan_month or 0 for k in kinds], width=0.27, label="planner (provisioned)")
    ax.bar(
        [x + 0.27 for x in xs],
        [k.playbook_month or 0 for k in kinds],
        width=0.27,
        label="playbook table",
    )
    ax.set_xticks(list(xs), [k.kind for k in kinds])
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel(f"USD per capsule-month ({report.phase} phase)")
    ax.set_title("Cost per capsule-month")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_plots(report: RunReport, results: list[TaskResult], out_dir: Path) -> list[Path]:
    return [
        latency_plot(results, out_dir / "latency.png"),
        accuracy_plot(report, out_dir / "accuracy.png"),
        cost_plot(report, out_dir / "cost.png"),
    ]
