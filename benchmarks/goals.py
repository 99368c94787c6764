"""One table of every goal the benchmarks state, run last by `make bench`.

Each benchmark writes `benchmarks/results/<name>.json` (`_report.write_results`): its command,
the CPU, the machine's load, and its goals, each a figure with its 95% interval where there is
one. This script reads them all, prints one table (figure, interval, goal, met or not, on the
machine that ran it) and writes it as the `goals` section of BENCHMARKS.md. A goal is met only
when its whole interval clears it. Sections of BENCHMARKS.md whose benchmark writes no
results file are listed, so a missing figure is visible rather than silently absent.

    .venv/bin/python benchmarks/goals.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from benchmarks._report import (
    BENCHMARKS_MD,
    RESULTS_DIR,
    BenchmarkResult,
    Goal,
    write_section,
)

SECTION = re.compile(r"<!-- section:([a-z0-9_]+) -->")


def load_results() -> list[BenchmarkResult]:
    """Every results file in the goals format (`_report.write_results`); other JSON a
    benchmark keeps beside them (raw runs, plots' data) is skipped."""
    results = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            results.append(BenchmarkResult.model_validate_json(path.read_text()))
        except ValidationError:
            continue
    return results


def _figure(goal: Goal) -> str:
    digits = 3 if abs(goal.figure) < 10 else 1
    return f"{goal.figure:.{digits}f}{goal.unit}"


def _interval(goal: Goal) -> str:
    if goal.low is None or goal.high is None:
        return "n/a"
    digits = 3 if abs(goal.figure) < 10 else 1
    return f"[{goal.low:.{digits}f}, {goal.high:.{digits}f}]"


def markdown(results: list[BenchmarkResult], missing: list[str]) -> str:
    met = sum(g.met for r in results for g in r.goals)
    total = sum(len(r.goals) for r in results)
    machines = sorted({r.cpu for r in results})
    lines = [
        "## Every goal (`benchmarks/goals.py`, run last by `make bench`)",
        "",
        f"{met} of {total} goals met. A goal is met only when its whole 95% interval clears it "
        '("n/a": a deterministic figure, or one without repeated runs). Each benchmark\'s '
        "section above says how it measured; the load column is the machine's load average "
        "when that benchmark finished. Machine: " + "; ".join(machines) + ".",
        "",
        "| benchmark | claim | figure | 95% interval | goal | met | load | note |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for r in results:
        for g in r.goals:
            lines.append(
                f"| {r.name} | {g.claim} | {_figure(g)} | {_interval(g)} "
                f"| {g.direction} {g.goal:g}{g.unit} | {'yes' if g.met else '**no**'} "
                f"| {r.load.removeprefix('load average ')} | {g.note} |"
            )
    if missing:
        lines += [
            "",
            "Sections with no machine-readable goals (their benchmark writes no "
            "`results/<name>.json` yet): " + ", ".join(f"`{m}`" for m in missing) + ".",
        ]
    return "\n".join(lines)


def main() -> int:
    results = load_results()
    names = {r.name for r in results}
    sections = SECTION.findall(BENCHMARKS_MD.read_text()) if BENCHMARKS_MD.exists() else []
    missing = [s for s in sections if s not in names and s != "goals"]
    table = Table(title="every benchmark goal")
    for column in ("benchmark", "claim", "figure", "95% interval", "goal", "met"):
        table.add_column(column)
    for r in results:
        for g in r.goals:
            table.add_row(
                r.name,
                g.claim,
                _figure(g),
                _interval(g),
                f"{g.direction} {g.goal:g}{g.unit}",
                "yes" if g.met else "[red]no[/red]",
            )
    console = Console()
    console.print(table)
    if missing:
        console.print(f"no results file for: {', '.join(missing)}")
    write_section("goals", markdown(results, missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
