"""`moe_decode.py --only half-dev`: the half-mask rules compared on the dev split (never the
held-out tasks), printed: each shard's most-used copy (`half_mask`, traffic only) and the
same with each copy checked against the reference successes (`checked_half_mask`). The full
run's half mask is the rule this comparison chose (`masks.HALF_RULE`)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from benchmarks._moe_decode.masks import DOMAIN, learn_capsule_mask, mask_accuracy
from benchmarks._report import cpu_name, machine_load

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder


def compare_half_rules(decoder: Decoder, args: argparse.Namespace, granularity: int) -> None:
    from trifecta.generative.evaluate import dev_tasks
    from trifecta.generative.mask_check import learn_checked_half_mask
    from trifecta.generative.selection import half_mask

    config = decoder.model.config
    _, traffic = learn_capsule_mask(decoder, args.traffic)
    traffic_rule = half_mask(traffic, granularity, config.top_k)
    started = time.perf_counter()
    checked, check = learn_checked_half_mask(
        decoder,
        traffic=traffic,
        domain=DOMAIN,
        granularity=granularity,
        check_tasks=args.check_tasks,
    )
    learn_seconds = time.perf_counter() - started
    masks = {
        "every expert": None,
        f"half mask, traffic rule {traffic_rule.layers}": traffic_rule.active(config.n_experts),
        f"half mask, checked rule {checked.layers}": checked.active(config.n_experts),
    }
    lines, diffs = mask_accuracy(decoder, masks, args.dev_per_grade, dev_tasks)
    print(
        f"Half-mask rules on the dev split (`--only half-dev --dev-per-grade "
        f"{args.dev_per_grade} --traffic {args.traffic} --check-tasks {args.check_tasks}`; "
        f"{cpu_name()}; one torch thread; {machine_load()} at the end). The checked rule: "
        f"{check.trials} trials on {len(check.successes)} reference successes of "
        f"{check.tasks} `{DOMAIN}` tasks, {learn_seconds:.0f} s."
    )
    print("\n".join(lines))
    for name, by in diffs.items():
        print(
            f"{name}: "
            + ", ".join(
                f"grades {span} {d[0]:+.1%} [{d[1]:+.1%}, {d[2]:+.1%}]" for span, d in by.items()
            )
        )
