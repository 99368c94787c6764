"""`moe_decode.py --only pairs`: the masks' paired-batch speed alone, printed (nothing
written): the capsule's verified mask and the half mask, each through the dense path and
through the dispatch, against every expert in the same batches. What the dense path buys is
read off the two rows of a mask; the section's rows come from the full run."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from benchmarks._moe_decode.masks import (
    half_label,
    layer_times,
    learn_capsule_mask,
    paired_batches,
    verified_capsule_mask,
)
from benchmarks._moe_decode.modes import HARD
from benchmarks._report import bootstrap_median, cpu_name, machine_load

if TYPE_CHECKING:
    import torch

    from trifecta.generative.decoding import Decoder
    from trifecta.generative.selection import ExpertMask


def rerun_pairs(decoder: Decoder, args: argparse.Namespace, granularity: int) -> None:
    """Learn the two masks as the full run does, then time them in paired batches."""
    from trifecta.generative.evaluate import heldout_tasks
    from trifecta.generative.selection import half_mask

    config = decoder.model.config
    _, traffic_load = learn_capsule_mask(decoder, args.traffic)
    verified, _, _ = verified_capsule_mask(decoder, traffic_load, args.check_tasks)
    half = half_mask(traffic_load, granularity, config.top_k, decoder.model.router_weights())
    label = half_label(granularity)
    masks: dict[str, torch.Tensor | ExpertMask] = {
        "capsule mask (verified)": verified.active(config.n_experts),
        label: half,
    }
    kept = {"capsule mask (verified)": verified.layers, label: half.layers}
    timed = {**masks, **{f"{name}, dispatch only": active for name, active in masks.items()}}
    by_grade = heldout_tasks(args.per_grade, HARD)
    tasks = [t for grade in HARD for t in by_grade[grade]]
    started = time.perf_counter()
    ratios = paired_batches(
        decoder,
        tasks,
        timed,
        args.pair_rounds,
        dispatch=frozenset(name for name in timed if name.endswith("dispatch only")),
    )
    seconds = time.perf_counter() - started
    lines = [
        f"Paired batches (`--only pairs --per-grade {args.per_grade} --pair-rounds "
        f"{args.pair_rounds} --traffic {args.traffic} --check-tasks {args.check_tasks}`; "
        f"{cpu_name()}; one torch thread; {machine_load()} at the end; {seconds:.0f} s): "
        f"{len(tasks)} hard tasks in batches of 50, every expert and each mask back to back, "
        "order alternating.",
        "",
        "| mask | experts per layer | every expert's seconds / the mask's, median [95% CI] | "
        "pairs |",
        "|---|---|---:|---:|",
    ]
    for name, values in ratios.items():
        med, low, high = bootstrap_median(values)
        layers = kept[name.removesuffix(", dispatch only")]
        lines.append(
            f"| {name} | {[len(k) for k in layers]} | {med:.3f}x [{low:.3f}, {high:.3f}] | "
            f"{len(values)} |"
        )
    lines += ["", *layer_times(decoder, args.reps)]
    print("\n".join(lines))
