"""`moe_decode.py --only half-mask`: the half mask re-measured alone (its accuracy on every
grade and its paired-batch speed), written into the last full run's section and results in
place of its half-mask rows."""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING

from benchmarks._moe_decode.masks import (
    DOMAIN,
    half_goals,
    half_label,
    learn_capsule_mask,
    mask_accuracy,
    paired_batches,
)
from benchmarks._moe_decode.modes import HARD
from benchmarks._report import (
    BENCHMARKS_MD,
    RESULTS_DIR,
    Goal,
    bootstrap_median,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder


def rerun_half_mask(decoder: Decoder, args: argparse.Namespace, granularity: int) -> None:
    """`--only half-mask`: the half mask's accuracy on every grade and its paired-batch speed,
    written into the last full run's section and results in place of its half-mask rows; the
    other rows and goals are that run's, unchanged."""
    from trifecta.generative.evaluate import heldout_tasks
    from trifecta.generative.selection import half_mask

    config = decoder.model.config
    _, traffic_load = learn_capsule_mask(decoder, args.traffic)
    half = half_mask(traffic_load, granularity, config.top_k, decoder.model.router_weights())
    label = half_label(granularity)
    print(f"{label}: {half.layers}")
    masks = {"every expert": None, label: half}  # with its merge plan
    mask_lines, diffs = mask_accuracy(decoder, masks, args.per_grade)
    by_grade = heldout_tasks(args.per_grade, HARD)
    tasks = [t for grade in HARD for t in by_grade[grade]]
    ratios = paired_batches(decoder, tasks, {label: half}, args.pair_rounds)[label]
    speed = bootstrap_median(ratios)
    old = json.loads((RESULTS_DIR / "moe_decode.json").read_text())
    kept = [Goal.model_validate(g) for g in old["goals"] if "half mask" not in g["claim"]]
    goals = kept + half_goals(label, speed, diffs[label]["all"])
    block = [
        "### Half mask re-run (`--only half-mask`)",
        "",
        "Command: `.venv/bin/python benchmarks/moe_decode.py --only half-mask --per-grade "
        f"{args.per_grade} --pair-rounds {args.pair_rounds} --traffic {args.traffic}`. CPU: "
        f"{cpu_name()}; one torch thread; {machine_load()} at the end of the run (shared with "
        "other engineers' jobs). Only the half mask was re-measured: it is now the product's "
        f"`half_mask` (granularity {granularity}: each FFN shard's most-used copy in the "
        f"capsule's traffic, {args.traffic} requests of `{DOMAIN}`), {half.layers}, each "
        "dropped copy merged into the kept copy of its shard (`selection.merge_plan`, "
        "MC-SMoE). Every other row of this section and every other goal below is the last "
        "full run's (its command at the top; `benchmarks/results/moe_decode.json`), and the "
        "rows above naming the half mask without merging are that run's former half mask.",
        "",
        f"Held-out accuracy ({args.per_grade} per grade, the same tasks for both rows, served "
        "decoding):",
        "",
        *mask_lines,
        "",
        "Paired difference against every expert (95% paired bootstrap over the tasks): "
        + ", ".join(
            f"grades {span} {d[0]:+.1%} [{d[1]:+.1%}, {d[2]:+.1%}]"
            for span, d in diffs[label].items()
        )
        + f". Speed in paired batches ({args.pair_rounds} rounds over the {len(tasks)} hard "
        "tasks, batches of 50, every expert and the mask back to back, order alternating): "
        f"every expert's seconds / the mask's {speed[0]:.3f}x [{speed[1]:.3f}, {speed[2]:.3f}] "
        f"over {len(ratios)} pairs.",
        "",
    ]
    pattern = re.compile(
        r"(<!-- section:moe_decode -->\n)(.*?)(\n<!-- /section:moe_decode -->)", re.S
    )
    text = BENCHMARKS_MD.read_text()
    match = pattern.search(text)
    if match is None:
        raise SystemExit("BENCHMARKS.md has no moe_decode section: run the full benchmark first")
    body = re.sub(r"### Half mask re-run.*?(?=\| claim \| figure)", "", match.group(2), flags=re.S)
    before, _, table_on = body.partition("| claim | figure")
    after = table_on.split("\n\n", 1)[1] if "\n\n" in table_on else ""
    markdown = "\n".join([before.rstrip(), "", *block, *goals_markdown(goals), "", after.strip()])
    print(markdown[len(before) :])
    if not args.no_write:
        write_section("moe_decode", markdown)
        write_results("moe_decode", "benchmarks/moe_decode.py", goals)
