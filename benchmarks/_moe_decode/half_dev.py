"""`moe_decode.py --only half-dev`: the half-mask rules compared on the dev split (never the
held-out tasks), printed: each shard's most-used copy (`half_mask`, traffic only) and the
same with the other copy merged into it (`selection.merge_plan`, MC-SMoE), with each copy
checked against the reference successes (`checked_half_mask`), and the copies fitted to the
full model's predictions (`mask_fit.fitted_half_mask`); saved for the full run's section.
The full run measures the merged rule (`half_mask` given the router); its section says
whether that is the rule this comparison chose."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from benchmarks._moe_decode.masks import DOMAIN, learn_capsule_mask, mask_accuracy
from benchmarks._moe_decode.stats import differences_sentence
from benchmarks._report import RESULTS_DIR, cpu_name, machine_load

RESULTS = RESULTS_DIR / "moe_decode_half_dev.json"

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder


def compare_half_rules(decoder: Decoder, args: argparse.Namespace, granularity: int) -> None:
    from trifecta.generative.evaluate import dev_tasks
    from trifecta.generative.mask_check import learn_checked_half_mask, reference_tasks
    from trifecta.generative.mask_fit import fitted_half_mask
    from trifecta.generative.selection import half_mask

    config = decoder.model.config
    _, traffic = learn_capsule_mask(decoder, args.traffic)
    traffic_rule = half_mask(traffic, granularity, config.top_k)
    # The merged rule's cost to build: the plan, then each layer's merged weights and router
    # rows (what a capsule's first request would otherwise pay), and the bytes they hold.
    started = time.process_time()
    merged = half_mask(traffic, granularity, config.top_k, decoder.model.router_weights())
    merge = merged.merge_tensor()
    assert merge is not None
    held = decoder.model.prepare_mask(merged.active(config.n_experts), merge)
    merge_ms = (time.process_time() - started) * 1e3
    plain_held = decoder.model.prepare_mask(traffic_rule.active(config.n_experts))
    started = time.perf_counter()
    checked, check = learn_checked_half_mask(
        decoder,
        traffic=traffic,
        domain=DOMAIN,
        granularity=granularity,
        check_tasks=args.check_tasks,
    )
    learn_seconds = time.perf_counter() - started
    started = time.perf_counter()
    prompts = [t.prompt for t in reference_tasks(args.check_tasks, DOMAIN)]
    fitted, before, after = fitted_half_mask(decoder, traffic_rule, granularity, prompts)
    fit_seconds = time.perf_counter() - started
    masks = {
        "every expert": None,
        f"half mask, traffic rule {traffic_rule.layers}": traffic_rule.active(config.n_experts),
        f"half mask, traffic rule, the other copies merged in {merged.layers}": merged,
        f"half mask, checked rule {checked.layers}": checked.active(config.n_experts),
        f"half mask, fitted rule {fitted.layers}": fitted.active(config.n_experts),
    }
    lines, diffs = mask_accuracy(decoder, masks, args.dev_per_grade, dev_tasks)
    text = [
        f"Half-mask rules compared on the dev split (`.venv/bin/python benchmarks/moe_decode.py "
        f"--only half-dev --dev-per-grade {args.dev_per_grade} --traffic {args.traffic} "
        f"--check-tasks {args.check_tasks}`; {cpu_name()}; one torch thread; {machine_load()} "
        f"at the end): {args.dev_per_grade} dev tasks per grade (`DEV_SEED`, none among the "
        "held-out tasks), served decoding. Traffic rule: each shard's most-used copy in the "
        "capsule's traffic. Checked rule: each kept copy swapped for the other where that keeps "
        f"more of the full model's verified successes ({check.trials} trials on "
        f"{len(check.successes)} successes of {check.tasks} `{DOMAIN}` reference tasks, "
        f"{learn_seconds:.0f} s). Fitted rule: per layer the copies whose masked model's "
        f"predictions diverge least from the full model's (KL {before:.4f} -> {after:.4f} nats "
        f"per masked position on the {len(prompts)} reference prompts, {fit_seconds:.0f} s). "
        "Merged: the traffic rule's copies, each dropped copy merged into the kept copy of its "
        "shard (MC-SMoE, Li et al. 2023: grouped by router-row similarity among the kept "
        "copies of the shard, weights and router rows averaged by the capsule's usage; "
        f"{merge_ms:.0f} ms of CPU to plan and build, {held / 2**20:.2f} MiB of cached "
        f"weights per capsule, as the plain half mask's {plain_held / 2**20:.2f} MiB).",
        "",
        *lines,
        "",
        differences_sentence("the dev tasks", diffs),
    ]
    # The rule of the smallest dev cost over grades 1-5; a tie keeps the traffic rule (first).
    costs = {name.split(" [")[0]: by["all"][0] for name, by in diffs.items()}
    chosen = max(costs, key=lambda name: costs[name])
    text += ["", f"Chosen on the dev split (the smallest cost on grades 1-5): {chosen}."]
    print("\n".join(text))
    if not args.no_write:
        RESULTS.write_text(json.dumps({"lines": text, "chosen": chosen}, indent=2) + "\n")


def half_dev_section() -> list[str]:
    """The last `--only half-dev` comparison, for the full run's section."""
    if not RESULTS.exists():
        return ["No dev-split comparison of half-mask rules saved yet (`--only half-dev`).", ""]
    saved = json.loads(RESULTS.read_text())
    # what the full run measures (`selection.half_mask` with the router: merged)
    used = "half mask, traffic rule, the other copies merged in"
    verdict = (
        "The full run's half mask is this choice."
        if saved.get("chosen") == used
        else f"The full run's half mask ({used}) is NOT this choice."
    )
    return [*saved["lines"], "", verdict, ""]
