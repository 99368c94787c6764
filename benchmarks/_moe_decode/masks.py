"""A capsule's expert masks in the decoding benchmark: learned as the product learns them,
timed against every expert in paired batches and per MoE layer, and scored on every grade."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from benchmarks._moe_decode.modes import BATCH, HARD, mask_routing, served_config
from benchmarks._moe_decode.stats import Estimate, paired_difference, paired_ratio
from benchmarks._report import Goal

if TYPE_CHECKING:
    import torch

    from trifecta.core.tasks import Task
    from trifecta.generative.decoding import Decoder
    from trifecta.generative.selection import ExpertMask

DOMAIN = "energy"


def half_label(granularity: int) -> str:
    return (
        "half mask (each shard's most-used copy, the other merged in)"
        if granularity > 1
        else "half mask (each layer's most-used half, the rest merged in)"
    )


def half_goals(label: str, speed: Estimate, accuracy: Estimate) -> list[Goal]:
    """The half mask's two goal rows: paired-batch speed and accuracy on grades 1-5."""
    return [
        Goal.of(f"{label} speed over every expert, paired batches", speed, at_least=1.0, unit="x"),
        Goal.of(
            f"accuracy change on grades 1-5, {label} vs every expert (points)",
            (100 * accuracy[0], 100 * accuracy[1], 100 * accuracy[2]),
            at_least=-3.0,
        ),
    ]


def learn_capsule_mask(decoder: Decoder, traffic: int) -> tuple[ExpertMask, torch.Tensor]:
    """The traffic-share rule's mask (90% of the routed tokens) and the traffic itself."""
    from trifecta.core.tasks import DEFAULT_MIX, generate_tasks
    from trifecta.generative.model import Routing
    from trifecta.generative.selection import learn_mask

    tasks = generate_tasks(traffic, seed=7, split="train", difficulties=DEFAULT_MIX, domain=DOMAIN)
    routing = Routing()
    for i in range(0, len(tasks), BATCH):
        decoder.decode([t.prompt for t in tasks[i : i + BATCH]], served_config(), routing)
    assert routing.load is not None
    return learn_mask(routing.load, 0.9, decoder.model.config.top_k), routing.load


def verified_capsule_mask(
    decoder: Decoder, traffic: torch.Tensor, check_tasks: int
) -> tuple[ExpertMask, int, int]:
    """The product's rule (`mask learn`, tolerance 1%): the mask, the reference successes it
    was checked on and the reference tasks."""
    from trifecta.generative.mask_check import learn_verified_mask

    mask, check = learn_verified_mask(
        decoder, traffic=traffic, domain=DOMAIN, tolerance=0.01, check_tasks=check_tasks
    )
    return mask, len(check.successes), check.tasks


def set_dense(decoder: Decoder, dense: bool) -> None:
    """Whether a masked layer with few active experts may run them as one dense FFN
    (`model.DENSE_EXTRA_EXPERTS`); False: every masked layer dispatches, as before it."""
    for block in decoder.model.blocks():
        block.moe.dense = dense


def paired_batches(
    decoder: Decoder,
    tasks: list[Task],
    masks: Mapping[str, torch.Tensor | ExpertMask],
    rounds: int,
    dispatch: frozenset[str] = frozenset(),
) -> dict[str, list[float]]:
    """Per batch of 50: seconds with every expert / seconds with each mask, decoded back to
    back in alternating order (served decoding). One ratio per batch and round. The masks
    named in `dispatch` run without the dense path."""
    modes: dict[str, torch.Tensor | ExpertMask | None] = {"every expert": None, **masks}
    E = decoder.model.config.n_experts
    ratios: dict[str, list[float]] = {name: [] for name in masks}
    config = served_config()
    turn = 0
    try:
        for _ in range(rounds):
            for i in range(0, len(tasks), BATCH):
                prompts = [t.prompt for t in tasks[i : i + BATCH]]
                names = list(modes) if turn % 2 == 0 else list(reversed(modes))
                turn += 1
                seconds = {}
                for name in names:
                    set_dense(decoder, name not in dispatch)
                    started = time.perf_counter()
                    decoder.decode(prompts, config, mask_routing(modes[name], E))
                    seconds[name] = time.perf_counter() - started
                for name in masks:
                    ratios[name].append(seconds["every expert"] / seconds[name])
    finally:
        set_dense(decoder, True)
    return ratios


def layer_times(decoder: Decoder, reps: int) -> list[str]:
    """One MoE layer's forward on fixed hidden states, by how many experts a mask leaves
    active, through the dense path where the layer takes it and through the dispatch: what a
    masked expert costs once the routing has run. Sizes: a cached block step of a batch of 50
    (400 positions) and a full pass (50 rows of 55 positions)."""
    import torch

    from trifecta.generative.model import DENSE_EXTRA_EXPERTS, Routing

    moe = decoder.model.blocks()[0].moe
    E, k = decoder.model.config.n_experts, decoder.model.config.top_k
    # (active experts, dense path allowed): every expert, then each count down to top-k,
    # with the dispatch beside the dense path where the dense path applies
    variants = [(E, False)]
    for a in range(min(E - 1, k + DENSE_EXTRA_EXPERTS + 1), k - 1, -1):
        variants += [(a, False), (a, True)] if a <= k + DENSE_EXTRA_EXPERTS else [(a, False)]
    generator = torch.Generator().manual_seed(0)
    names = [f"{a} of {E}{', dense' if dense else ''}" for a, dense in variants]
    lines = [
        "| positions per call | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    try:
        for n in (400, 2750):
            x = torch.randn(n, decoder.model.config.d_model, generator=generator)
            counted = torch.ones(n, dtype=torch.bool)
            times: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
            with torch.no_grad():
                for _ in range(reps):
                    for a, dense in variants:
                        active = torch.zeros((decoder.model.config.n_layers, E), dtype=torch.bool)
                        active[:, :a] = True
                        moe.dense = dense
                        moe(x, counted, Routing(active=active))  # the mask's cache filled
                        started = time.perf_counter()
                        for _ in range(20):
                            moe(x, counted, Routing(active=active))
                        times[(a, dense)].append((time.perf_counter() - started) / 20 * 1e3)
            cells = []
            for v in variants:
                ratio, low, high = paired_ratio(times[v], times[(E, False)])
                cells.append(f"{np.median(times[v]):.2f} ms ({ratio:.2f}x [{low:.2f}, {high:.2f}])")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    finally:
        moe.dense = True
    return lines


def mask_accuracy(
    decoder: Decoder,
    masks: Mapping[str, torch.Tensor | ExpertMask | None],
    per_grade: int,
    split: Callable[[int], dict[int, list[Task]]] | None = None,
) -> tuple[list[str], dict[str, dict[str, Estimate]]]:
    """Accuracy on every grade with each mask (None: every expert) on the same tasks (`split`:
    held-out by default, or the dev split's), and each mask's paired difference against every
    expert on grades 1-2, 3-5 and all."""
    from trifecta.generative.evaluate import heldout_tasks
    from trifecta.generative.sequences import answer_of

    tasks = (split or heldout_tasks)(per_grade)
    E = decoder.model.config.n_experts
    config = served_config()
    verdicts: dict[str, dict[int, np.ndarray]] = {}
    for name, mask in masks.items():
        verdicts[name] = {}
        for grade, items in tasks.items():
            correct = []
            for i in range(0, len(items), BATCH):
                chunk = items[i : i + BATCH]
                results, _ = decoder.decode(
                    [t.prompt for t in chunk], config, mask_routing(mask, E)
                )
                correct += [
                    answer_of(r.text) == t.answer for r, t in zip(results, chunk, strict=True)
                ]
            verdicts[name][grade] = np.array(correct)
    lines = [
        "| experts | " + " | ".join(f"grade {g}" for g in tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for name, by_grade in verdicts.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{v.mean():.1%}" for v in by_grade.values()) + " |"
        )
    spans = {"1-2": (1, 2), "3-5": HARD, "all": tuple(tasks)}
    every = next(iter(verdicts))  # the first entry: every expert
    diffs: dict[str, dict[str, Estimate]] = {}
    for name in list(verdicts)[1:]:
        diffs[name] = {}
        for span, grades in spans.items():
            ours = np.concatenate([verdicts[name][g] for g in grades])
            theirs = np.concatenate([verdicts[every][g] for g in grades])
            diffs[name][span] = paired_difference(ours, theirs)
    return lines, diffs
