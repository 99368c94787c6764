"""Entropy escalation against trained and structural routers: `trifecta cognitive eval`'s
table with bootstrap 95% intervals, the signal aggregates' failure-prediction AUROC, and the
endpoint backend's entropy-estimate bias.

Claims checked (exit code 1 if one fails), all on held-out tasks in the default capsule mix,
each met only when its bootstrap interval clears it: `auto (live)`, the policy the product
serves, reaches at least 95% of the largest tier's accuracy at no more than 40% of its compute
cost; it beats random escalation at the cascade's per-tier rates; and its APGR is above the
best baseline router's (RouteLLM-style on prompt embeddings, logistic regression on the
prompt's structure, random escalation), paired over the same bootstrap draws. Every baseline
runs in this script on the same tasks.

Pre-registered policy (fixed before the reported run; the evaluation sample chooses nothing):
`auto (live)` is the shipped start router, then the entropy cascade, with the router's
cut-offs and the cascade's thresholds fitted jointly by the product's default calibration
target (`trifecta cognitive calibrate --budget 0.40`, `service.DEFAULT_TARGET`): the most
accurate configuration whose compute, by the upper end of its bootstrap 95% interval on the
600-task calibration sample (seed 0), stays within 40% of the largest tier's. That rule was
chosen on development samples drawn with other seeds (1-6), never on the evaluation tasks.

    .venv/bin/python benchmarks/escalation.py [--calibration 600] [--eval 1000] [--router 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._report import Goal, cpu_name, machine_load, write_results, write_section
from trifecta.cognitive.backends import shipped_tiers
from trifecta.cognitive.estimate_bias import bias_markdown, estimate_bias
from trifecta.cognitive.evaluation import LIVE, EvalConfig, EvalReport, evaluate
from trifecta.cognitive.report import gap_table, goals, markdown, plot, points_table
from trifecta.cognitive.tiers import TIER_NAMES
from trifecta.core.tasks import DEFAULT_MIX, generate_tasks

PLOT = Path(__file__).resolve().parent.parent / "docs" / "cognitive_escalation.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=600)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--router", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.40)
    parser.add_argument(
        "--operating-point",
        choices=("budget", "keep", "accurate"),
        default="budget",
        help="each policy's configuration, chosen on the calibration sample: the most accurate "
        "whose compute stays within --budget by its bootstrap upper bound (the product's "
        "calibration target), the cheapest keeping --keep-accuracy of the largest tier's "
        "accuracy by its bootstrap lower bound, or the most accurate within the budget by the "
        "point estimate",
    )
    parser.add_argument("--keep-accuracy", type=float, default=0.95)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    console = Console()

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    config = EvalConfig(
        calibration_tasks=args.calibration,
        eval_tasks=args.eval,
        router_tasks=args.router,
        seed=args.seed,
        budget=args.budget,
        operating_point=args.operating_point,
        keep_accuracy=args.keep_accuracy,
        bootstrap=args.bootstrap,
    )
    with console.status("evaluating") as status:
        report = evaluate(config, progress=lambda msg: status.update(msg))
        status.update("measuring the top-k entropy estimate")
        prompts = [
            t.prompt
            for t in generate_tasks(
                300, seed=args.seed + 99, split="heldout", difficulties=DEFAULT_MIX
            )
        ]
        bias = estimate_bias(shipped_tiers(TIER_NAMES), prompts)
    seconds = time.perf_counter() - started
    console.print(points_table(report))
    console.print(gap_table(report))
    outcome = goals(report)
    for goal, met, figures in outcome:
        console.print(f"{'[green]met[/green]' if met else '[red]not met[/red]'}  {goal}: {figures}")
    plot(report, PLOT)
    machine = f"{cpu_name()}; {machine_load()} at the end of the run"
    if not args.no_write:
        write_results("escalation", "benchmarks/escalation.py", result_goals(report))
        intro = (
            "`.venv/bin/python benchmarks/escalation.py` (the table of `trifecta cognitive "
            "eval`). Baselines in the same run: each tier alone, random escalation at the "
            "cascade's per-tier rates, the oracle, a RouteLLM-style router (logistic "
            "regression on all-MiniLM-L6-v2 prompt embeddings, trained on which tier solved "
            "which train-split task) and a router on the prompt's structure (the same "
            "regression on length, operand, look-up, subtraction and sensor counts and the "
            "grade read from the grammar: `cognitive/prompt_features.py`). Compute cost is "
            "2 x active parameters per token of the "
            "checkpoint each tier stands for (8B / 13B / 70B), relative to always calling the "
            "largest; USD cost is `fleet.sizing` on A10 / A100-80GB / H100 at batch 1. The "
            "figures are accuracies and token counts, not timings, so machine load does not "
            f"move them (this run took {seconds:.0f} s on {machine}, shared with other "
            "engineers' jobs)."
        )
        registered = (
            "Pre-registered before this run (the script's docstring, committed first): "
            "`auto (live)` is the shipped start router, then the entropy cascade, both fitted "
            "by the product's default calibration target, `--budget 0.40`: the most accurate "
            "configuration whose compute, by the upper end of its bootstrap 95% interval on "
            "the calibration sample, stays within 40% of the largest tier's. The evaluation "
            "sample chooses nothing. The rule was picked on development samples drawn with "
            "seeds 1-6 (600 tasks to calibrate, 1000 to evaluate, never these tasks): it met "
            "both ends of the goal on 6 of 6 (the lowest accuracy bound 95.0%, the highest "
            "compute bound 39.0%), the previous target (`--keep 0.95`, the cheapest "
            "configuration keeping 95% by its lower bound) on 2 of 6, the budget target "
            "without the router on 2 of 6. The previous run of this section, with the `keep` "
            "target, reached 96.9% [94.8, 98.7] of the largest tier's accuracy at 31.2% "
            "[28.5, 34.0] of its compute: the budget left 9 points unspent."
        )
        write_section(
            "escalation",
            "\n\n".join(
                [
                    "## Cognitive layer: entropy escalation against trained and structural routers",
                    intro,
                    registered,
                    markdown(report),
                    f"![accuracy against compute cost]({PLOT.relative_to(PLOT.parent.parent)})",
                    "Entropy estimated from `top_logprobs` (what the OpenAI-compatible backend "
                    "sees) against the exact entropy, per generated step on 300 held-out prompts:",
                    bias_markdown(bias),
                ]
            ),
        )
    return 0 if all(met for _, met, _ in outcome) else 1


def result_goals(report: EvalReport) -> list[Goal]:
    """The section's goals for `make bench`'s table, each with its bootstrap interval."""
    large = report.point(f"always {report.tiers[-1]}")
    live = report.point(LIVE)
    ci = report.intervals[LIVE]
    gap = {g.method: g for g in report.gap}
    baseline = report.apgr_baseline
    margin = report.apgr_margin
    assert margin is not None
    return [
        Goal(
            claim=f"{LIVE}: accuracy, share of the largest tier's",
            figure=live.accuracy / large.accuracy if large.accuracy else 0.0,
            low=ci.relative_accuracy.low,
            high=ci.relative_accuracy.high,
            goal=0.95,
            direction="at least",
        ),
        Goal(
            claim=f"{LIVE}: compute, share of the largest tier's",
            figure=live.cost_share,
            low=ci.cost_share.low,
            high=ci.cost_share.high,
            goal=0.40,
            direction="at most",
        ),
        Goal(
            claim=f"APGR: cascade minus the best baseline router ({baseline})",
            figure=gap["cascade"].apgr - gap[baseline].apgr,
            low=margin.low,
            high=margin.high,
            goal=0.0,
            direction="at least",
            note="paired over the same bootstrap draws",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
