"""Decoding the generative model: parallel unmasking and the dual KV cache against one token
per step, a capsule's learned expert mask against every expert, and batching; accuracy on
the same held-out tasks beside every speed.

The baseline a skeptic names is LLaDA's own sampler: one token per denoising step, low-
confidence remasking, semi-autoregressive blocks, no cache. Every mode decodes the same
held-out hard tasks (grades 3-5) with the shipped model on one torch thread; the modes take
turns `--reps` times so that the machine's drift touches all of them, and tokens/s carries the
median and a 95% bootstrap interval over the runs (ratios: each side resampled).

The served settings (the Fast-dLLM threshold, the block length) are chosen by `--sweep` on a
dev split disjoint from the held-out tasks (`_moe_decode/sweep.py`); a full run shows that
sweep's table from `results/moe_decode_sweep.json`.

The capsule's mask is learned as the product learns it (`trifecta generative mask learn`,
the verified rule): its traffic (`--traffic` training-split tasks of its domain in the default
mix, decoded with every expert, routed tokens counted per layer and expert) orders the
experts, least used first, and each is dropped only while the full model's verified answers
on `--check-tasks` reference tasks of the domain stay right within 1%. The traffic-share rule
alone (per layer the fewest experts that took 90% of the tokens) is measured beside it.

Masked against every expert is also timed in paired batches: each batch of 50 tasks decoded
with every expert and with each mask back to back, the order alternating, so a ratio within a
pair sees the same machine (other engineers' jobs come and go on it).

The half mask is half of each layer's experts chosen by the capsule's traffic as the
product's `half_mask` chooses them: on the fine-grained shipped model, each FFN shard's most-
used copy, so every shard stays. `--only half-mask` re-measures only that mask (its accuracy
on every grade and its paired-batch speed) and keeps every other row of the section and of
`results/moe_decode.json` from the last full run. `--only pairs` prints the masks' paired-
batch speed, each through the dense path and through the dispatch, and one MoE layer's times.

    .venv/bin/python benchmarks/moe_decode.py [--per-grade 100] [--reps 5] [--no-write]
    .venv/bin/python benchmarks/moe_decode.py --sweep [--dev-per-grade 100] [--reps 2]
    .venv/bin/python benchmarks/moe_decode.py --only half-mask [--per-grade 200]
    .venv/bin/python benchmarks/moe_decode.py --only pairs [--per-grade 20] [--pair-rounds 2]
    .venv/bin/python benchmarks/moe_decode.py --only genplace [--batches 24] [--traffic 400]

`--only genplace` (section genplace, `_moe_decode/genplace.py`): the generative service's
experts on placed nodes under skewed traffic, placed from the stored traffic against equal
weights, and rebalanced online after the traffic shifts against a kept placement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._moe_decode import sweep
from benchmarks._moe_decode.half_dev import compare_half_rules, half_dev_section
from benchmarks._moe_decode.half_rerun import rerun_half_mask
from benchmarks._moe_decode.masks import (
    DOMAIN,
    half_goals,
    half_label,
    layer_times,
    learn_capsule_mask,
    mask_accuracy,
    paired_batches,
    verified_capsule_mask,
)
from benchmarks._moe_decode.modes import HARD, Mode, llada_config, run_mode, served_config
from benchmarks._moe_decode.pairs import rerun_pairs
from benchmarks._moe_decode.source import beside_source, shipped_granularity, shipped_source
from benchmarks._moe_decode.stats import (
    differences_sentence,
    paired_difference,
    paired_ratio,
    points,
)
from benchmarks._report import (
    Goal,
    bootstrap_median,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.generative.mask_check import DEFAULT_CHECK_TASKS
from trifecta.generative.model import DENSE_EXTRA_EXPERTS


def run_sweep(decoder: Decoder, args: argparse.Namespace) -> None:
    """`--sweep`: the served settings on the dev split; saved for the full run's section."""
    rows, llada = sweep.run_sweep(decoder, args.dev_per_grade, args.reps)
    command = (
        f".venv/bin/python benchmarks/moe_decode.py --sweep --dev-per-grade "
        f"{args.dev_per_grade} --reps {args.reps}"
    )
    saved = sweep.results(rows, sweep.choose(rows), command, llada)
    print("\n".join(sweep.sweep_lines(saved)))
    if not args.no_write:
        sweep.RESULTS.write_text(json.dumps(saved, indent=2) + "\n")


def sweep_section() -> list[str]:
    """The last `--sweep`'s table, and whether the served defaults are its choice."""
    from trifecta.generative.decoding import DecodeConfig

    if not sweep.RESULTS.exists():
        return ["No dev-split sweep saved yet (`--sweep`).", ""]
    saved = json.loads(sweep.RESULTS.read_text())
    served = DecodeConfig()
    chosen = saved["chosen"]
    same = (chosen["threshold"], chosen["block_length"]) == (served.threshold, served.block_length)
    verdict = (
        "the served defaults (`DecodeConfig`) are this choice"
        if same
        else (
            f"the served defaults (`DecodeConfig`: threshold {served.threshold}, blocks of "
            f"{served.block_length}) are NOT this choice"
        )
    )
    return [*sweep.sweep_lines(saved), "", f"{verdict[0].upper()}{verdict[1:]}.", ""]


def full_run(decoder: Decoder, args: argparse.Namespace, granularity: int) -> None:
    """Every mode, the masks, the sweep's table, the AR source beside; the section."""
    from trifecta.generative.evaluate import heldout_tasks
    from trifecta.generative.selection import configured_mask, half_mask

    model = decoder.model
    by_grade = heldout_tasks(args.per_grade, HARD)
    tasks = [t for grade in HARD for t in by_grade[grade]]
    grades = np.array([t.difficulty for t in tasks])
    share_mask, traffic_load = learn_capsule_mask(decoder, args.traffic)
    started = time.perf_counter()
    mask, check_successes, check_total = verified_capsule_mask(
        decoder, traffic_load, args.check_tasks
    )
    learn_seconds = time.perf_counter() - started
    print(f"verified mask {mask.layers} in {learn_seconds:.0f} s")
    E = model.config.n_experts
    active = mask.active(E)
    # The half mask an operator would configure from the capsule's traffic (the product's
    # `half_mask`, `mask learn --rule half`: on a fine-grained model each shard's most-used
    # copy, the other copy merged into it). Experts 0-3 in every
    # layer are kept as a row of the accuracy table.
    half = half_mask(traffic_load, granularity, model.config.top_k, model.router_weights())
    half_active = half  # its merge plan goes with it
    half_name = half_label(granularity)
    first_half_active = configured_mask(list(range(E // 2)), model.config.n_layers).active(E)
    shipped = served_config()
    modes = [
        Mode("one token per step, no cache (LLaDA)", llada_config()),
        Mode(
            sweep.label(shipped.threshold, shipped.block_length, False), served_config(cache=False)
        ),
        Mode(f"served ({sweep.label(shipped.threshold, shipped.block_length)})", shipped),
        Mode("served, capsule mask (verified)", served_config(), active=active),
        Mode(f"served, {half_name}", served_config(), active=half_active),
        Mode("served, batch 1", served_config(), batch=1),
    ]
    subset = tasks[:: max(1, len(tasks) // 60)]  # batch 1 is slow: a spread of 60 tasks
    for rep in range(args.reps):
        for mode in modes if rep % 2 == 0 else reversed(modes):
            run_mode(decoder, mode, subset if mode.batch == 1 else tasks)
        print(
            f"round {rep + 1}/{args.reps}: "
            + ", ".join(f"{np.median(m.speeds):,.0f}" for m in modes)
        )

    base, nocache, served, masked, half_mode, _ = modes
    dispatch_name = "capsule mask (verified), dispatch only"
    pairs = paired_batches(
        decoder,
        tasks,
        {"capsule mask (verified)": active, half_name: half_active, dispatch_name: active},
        args.pair_rounds,
        dispatch=frozenset({dispatch_name}),
    )
    pair_lines = [
        "| mask | experts per layer | every expert's seconds / the mask's, median [95% CI] | "
        "pairs |",
        "|---|---|---:|---:|",
    ]
    for name, ratios in pairs.items():
        med, low, high = bootstrap_median(ratios)
        kept = mask.layers if "capsule" in name else half.layers
        pair_lines.append(
            f"| {name} | {[len(k) for k in kept]} | {med:.3f}x [{low:.3f}, {high:.3f}] | "
            f"{len(ratios)} |"
        )
    shape = served_config()
    lines = [
        "## Generative model decoding (`benchmarks/moe_decode.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/moe_decode.py --per-grade {args.per_grade} "
        f"--reps {args.reps} --pair-rounds {args.pair_rounds} --traffic {args.traffic} "
        f"--check-tasks {args.check_tasks}`. CPU: {cpu_name()}; one torch thread; "
        f"{machine_load()} at the "
        "end of the run (other engineers' jobs shared the cores: absolute tokens/s move with "
        "the load, ratios of modes taking turns much less).",
        "",
        f"Shipped model, {len(tasks)} held-out tasks of grades 3-5 ({args.per_grade} per grade), "
        f"response region of {shape.gen_length} positions in {shape.blocks} blocks of "
        f"{shape.block_length}, served threshold {shape.threshold}, batches of 50 (the batch-1 row: "
        f"{len(subset)} of the tasks one at a time). Tokens/s counts every response position "
        f"decoded. Tokens/s: median of {args.reps} runs per mode, 95% bootstrap interval; ratios: "
        "the median of the per-round ratios (modes take turns within a round), bootstrap "
        "interval over the rounds.",
        "",
        "| mode | tokens/s | vs LLaDA | forward passes | grade 3 | grade 4 | grade 5 | all hard |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in modes:
        med, low, high = bootstrap_median(m.speeds)
        ratio, rlow, rhigh = paired_ratio(m.speeds, base.speeds)
        assert m.correct is not None
        if m.batch == 1:
            acc = ["-", "-", "-", f"{m.correct.mean():.1%} (of {len(subset)})"]
        else:
            acc = [f"{m.correct[grades == g].mean():.1%}" for g in HARD] + [
                f"{m.correct.mean():.1%}"
            ]
        lines.append(
            f"| {m.name} | {med:,.0f} [{low:,.0f}, {high:,.0f}] | {ratio:.2f}x [{rlow:.2f}, "
            f"{rhigh:.2f}] | {m.passes} | " + " | ".join(acc) + " |"
        )
    assert base.correct is not None and served.correct is not None and masked.correct is not None
    assert nocache.correct is not None
    d_served = paired_difference(served.correct, base.correct)
    d_masked = paired_difference(masked.correct, served.correct)
    speed = paired_ratio(served.speeds, base.speeds)
    mask_speed = bootstrap_median(pairs["capsule mask (verified)"])
    half_speed = bootstrap_median(pairs[half_name])
    mask_lines, mask_diffs = mask_accuracy(
        decoder,
        {
            "every expert": None,
            "capsule's mask, verified rule (the product's)": active,
            "capsule's mask, traffic-share rule (the former default)": share_mask.active(E),
            half_name: half_active,
            f"half mask, experts 0-{E // 2 - 1} in every layer": first_half_active,
        },
        args.per_grade,
    )
    d_learned = mask_diffs["capsule's mask, verified rule (the product's)"]
    d_halfmask = mask_diffs[half_name]
    reads = masked.touched_per_pass / max(1e-9, served.touched_per_pass)
    usage = (traffic_load / traffic_load.sum(dim=1, keepdim=True)).numpy()
    lines += ["", *sweep_section(), *half_dev_section()]
    lines += [
        f"The capsule's mask, verified rule: its traffic ({args.traffic} requests of domain "
        f"`{DOMAIN}`, default mix) orders the experts, and a drop is kept while the full "
        f"model's {check_successes} verified successes on {check_total} reference tasks of the "
        f"domain stay right within 1% ({learn_seconds:.0f} s to learn): {mask.layers} "
        f"({mask.active_count()} of {model.config.n_layers * model.config.n_experts} "
        f"layer-experts). The traffic-share rule keeps {share_mask.layers}. Traffic share per "
        "expert, layer by layer: "
        + "; ".join("[" + ", ".join(f"{v:.2f}" for v in row) + "]" for row in usage)
        + f". Every token still runs top-{model.config.top_k} experts. A masked layer's "
        "router scores only its active experts (router rows sliced per mask, cached); a layer "
        f"left at most top-k + {DENSE_EXTRA_EXPERTS} active experts runs them as one dense FFN "
        "(two matmuls over their weights stacked once per mask, each expert's hidden units "
        "scaled by its gate, zero where a token did not pick it), the others dispatch each "
        "token to its experts. A mask saves router work and expert weights read, and on "
        "dense layers the dispatch's sort, per-expert calls and scatter-add: "
        f"{served.touched_per_pass:.2f} experts per layer per forward pass with every expert, "
        f"{masked.touched_per_pass:.2f} with the capsule's mask ({reads:.2f}x); expert calls "
        f"{served.expert_calls} -> {masked.expert_calls}.",
        "",
        f"Masked decoding timed in paired batches ({args.pair_rounds} rounds over the "
        f"{len(tasks)} tasks, batches of 50; each batch decoded with every expert and with "
        "each mask back to back, order alternating; 95% bootstrap interval over the pairs):",
        "",
        *pair_lines,
        "",
        "What a masked expert costs once routed: one MoE layer's forward on the same hidden "
        "states with a mask leaving the first k experts active, through the dispatch (sort "
        "the (token, expert) pairs once, call each expert with tokens on one contiguous "
        "slice, scatter-add) and, where the layer takes it, the dense path; median ms of "
        f"{args.reps} rounds of 20 calls, ratio to every expert active (per-round, bootstrap "
        "interval):",
        "",
        *layer_times(decoder, args.reps),
        "",
        f"Held-out accuracy on every grade ({args.per_grade} per grade, the same tasks for "
        "each row, served decoding) with every expert, the capsule's mask by each rule and "
        f"two half masks ({E // 2} experts per layer: by the capsule's traffic, granularity "
        f"{granularity}, {half.layers}, and experts 0-{E // 2 - 1}):",
        "",
        *mask_lines,
        "",
        differences_sentence("the tasks", mask_diffs),
        "",
        f"Accuracy, paired over the same tasks (95% bootstrap): served decoding minus LLaDA "
        f"one-per-step {d_served[0]:+.1%} [{d_served[1]:+.1%}, {d_served[2]:+.1%}]; capsule "
        f"mask (verified) minus every expert (grades 3-5) {d_masked[0]:+.1%} [{d_masked[1]:+.1%}, {d_masked[2]:+.1%}].",
        "",
    ]
    assert half_mode.correct is not None
    d_half = paired_difference(half_mode.correct, served.correct)
    reads_half = half_mode.touched_per_pass / served.touched_per_pass
    lines += [
        f"The {half_name} reads {half_mode.touched_per_pass:.2f} "
        f"experts per layer per pass ({reads_half:.2f}x) "
        f"at {d_half[0]:+.1%} [{d_half[1]:+.1%}, {d_half[2]:+.1%}] accuracy against every "
        "expert.",
        "",
        f"Held-out accuracy per grade ({args.per_grade} tasks per grade, the same tasks for "
        "both models: `HELDOUT_SEED`, the edge evaluation's): the generative model beside the AR "
        "checkpoint it was converted from (greedy decoding). The cognitive tiers, since retrained "
        "with worked answers, report theirs in `docs/cognitive.md` (`trifecta cognitive eval`).",
        "",
        *beside_source(decoder, args.per_grade, shipped_source()),
        "",
    ]

    goals = [
        Goal.of("served decoding tokens/s over LLaDA one-per-step", speed, at_least=2.0, unit="x"),
        Goal.of(
            "accuracy change, served vs one-per-step (points)", points(d_served), at_least=-3.0
        ),
        Goal.of(
            "capsule mask (verified) speed over every expert, paired batches",
            mask_speed,
            at_least=1.0,
            unit="x",
        ),
        Goal.of(
            "accuracy change on grades 3-5, capsule mask (verified) vs every expert (points)",
            points(d_masked),
            at_least=-3.0,
        ),
        Goal.of(
            "accuracy change on grades 1-5, capsule mask (verified) vs every expert (points)",
            points(d_learned["all"]),
            at_least=-3.0,
        ),
        *half_goals(half_name, half_speed, d_halfmask["all"]),
    ]
    lines += goals_markdown(goals)
    lines += [
        "",
        "Goals are met only when the whole interval clears them. Accuracy goals: no more than 3 "
        "points lost (our choice; Fast-dLLM reports its speed-ups at about equal accuracy).",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        write_section("moe_decode", markdown)
        write_results("moe_decode", "benchmarks/moe_decode.py", goals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-grade", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--traffic", type=int, default=400)
    parser.add_argument("--check-tasks", type=int, default=DEFAULT_CHECK_TASKS)
    parser.add_argument("--pair-rounds", type=int, default=10)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--granularity",
        type=int,
        default=None,
        help="FFN shards per expert group (default: the shipped recipe's)",
    )
    parser.add_argument(
        "--only",
        choices=["half-mask", "pairs", "half-dev", "genplace"],
        default=None,
        help="half-mask: re-measure only the half mask, the section's other rows kept; "
        "pairs: print the masks' paired-batch speed, dense path and dispatch (no write); "
        "half-dev: print the half-mask rules' accuracy on the dev split (no write); "
        "genplace: the service's experts on placed nodes under skewed traffic (section "
        "genplace)",
    )
    parser.add_argument("--batches", type=int, default=24, help="genplace: batches per phase")
    parser.add_argument(
        "--sweep", action="store_true", help="choose the served settings on the dev split"
    )
    parser.add_argument("--dev-per-grade", type=int, default=100, help="--sweep: dev tasks")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch

    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path
    from trifecta.generative.decoding import Decoder

    torch.set_num_threads(1)
    decoder = Decoder(load_model(args.model or shipped_model_path()))
    granularity = args.granularity or shipped_granularity()
    if args.sweep:
        run_sweep(decoder, args)
    elif args.only == "half-mask":
        rerun_half_mask(decoder, args, granularity)
    elif args.only == "half-dev":
        compare_half_rules(decoder, args, granularity)
    elif args.only == "pairs":
        rerun_pairs(decoder, args, granularity)
    elif args.only == "genplace":
        from benchmarks._moe_decode.genplace import run_genplace

        run_genplace(decoder.model, args)
    else:
        full_run(decoder, args, granularity)


if __name__ == "__main__":
    main()
