"""The recipe that reproduces the shipped tiers: `trifecta models train`.

Each tier is a `LlamaForCausalLM` trained from scratch, seeded, on the train split of the task
family (`core/tasks.py`): the sequence is `<bos> prompt answer <eos>` and the loss covers the
answer and the end token only. The held-out split then measures accuracy per grade, which is
saved beside the weights in `training.json`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trifecta.cognitive.checkpoints import (
    build_tokenizer,
    llama_config,
    save_checkpoint,
    tier_vocabulary,
)
from trifecta.cognitive.growth import grow
from trifecta.cognitive.scratchpad import ANSWER_TOKENS, Style, worked_answer
from trifecta.cognitive.tiers import TierSpec
from trifecta.core.errors import InvalidInput
from trifecta.core.logging import get_logger
from trifecta.core.tasks import DIFFICULTIES, TaskFamilyVerifier, generate_tasks, iter_tasks

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

# After the look-up phase, the hard grades are drawn more often: a worked three-term answer is
# two steps to learn, and plain look-ups and sums are learnt within a few hundred steps.
# Telemetry prompts come with the short-telemetry curriculum (`core.tasks.iter_tasks`): without
# it look-ups stayed at chance.
TRAIN_MIX: dict[int, float] = {1: 1.0, 2: 1.0, 3: 1.5, 4: 2.0, 5: 2.5}
# The refine phase (`TierSpec.refine_steps`, after the mix): the grades made of look-ups drawn
# far more often, grade 5 most. A grown tier's errors on grades 1, 3 and 5 were almost all a
# wrong value copied for a sensor (docs/cognitive.md), and the mix draws a plain look-up only
# 1 task in 8; with look-ups fixed (`named` answers), grade 5's second signed sum was left.
REFINE_MIX: dict[int, float] = {1: 2.0, 2: 0.5, 3: 2.0, 4: 1.5, 5: 5.0}
# The refine phase's prompts list the usual number of sensors (no short-telemetry curriculum): on
# held-out look-ups 97.5% against 92.0% with it, the same 800 `operands` steps (docs/cognitive.md).
REFINE_SHORT_TELEMETRY = False
TIER_OFFSETS = {"small": 0, "medium": 1, "large": 2}


@dataclass(frozen=True)
class TrainResult:
    tier: str
    seed: int
    steps: int
    seconds: float
    parameters: int
    final_loss: float
    heldout_accuracy: dict[int, float]  # grade -> accuracy on held-out tasks
    directory: Path | None
    grown_from: bool = False
    model: Any = field(default=None, repr=False)
    refine_steps: int = 0  # of `steps`, those of the refine phase
    # A warm start's earlier training (the checkpoint it continued): its steps and seconds
    # are included in `steps` and `seconds`.
    earlier_steps: int = 0
    earlier_seconds: float = 0.0
    # The refine phase's grade weights and peak rate, when given in place of the recipe's.
    refine_mix: Mapping[int, float] | None = None
    refine_learning_rate: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "seed": self.seed,
            "steps": self.steps,
            "refine_steps": self.refine_steps,
            "warm_start": {"steps": self.earlier_steps, "seconds": round(self.earlier_seconds, 1)}
            if self.earlier_steps
            else None,
            "seconds": round(self.seconds, 1),
            "parameters": self.parameters,
            "final_loss": round(self.final_loss, 4),
            "grown": self.grown_from,
            "heldout_accuracy": {str(g): round(a, 4) for g, a in self.heldout_accuracy.items()},
            **(
                {"refine_mix": {str(g): w for g, w in self.refine_mix.items()}}
                if self.refine_mix is not None
                else {}
            ),
            **(
                {"refine_learning_rate": self.refine_learning_rate}
                if self.refine_learning_rate is not None
                else {}
            ),
        }


def training_batches(
    seed: int,
    batch_size: int,
    mix: Mapping[int, float] = TRAIN_MIX,
    *,
    pool_batches: int = 8,
    style: Style = "operands",
    short_telemetry: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless `(input_ids, answer_mask)` batches from the train split, right-padded with
    `<pad>`; `answer_mask` marks the answer and `<eos>` tokens. Tasks are drawn `pool_batches`
    batches at a time and grouped by length, so that short prompts (plain sums) are not padded
    to the width of long ones (telemetry look-ups): about a third fewer positions to compute.
    `short_telemetry`: the look-up curriculum of `core.tasks.iter_tasks`."""
    import torch

    chars = tier_vocabulary()
    stream = iter_tasks(seed=seed, split="train", difficulties=mix, short_telemetry=short_telemetry)
    order = random.Random(seed)
    while True:
        pool = []
        for task in (next(stream) for _ in range(batch_size * pool_batches)):
            prompt = chars.encode(task.prompt, bos=True)
            answer = chars.encode(worked_answer(task.prompt, style), eos=True)
            pool.append((prompt + answer, len(prompt)))
        pool.sort(key=lambda pair: len(pair[0]))
        groups = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        order.shuffle(groups)
        for group in groups:
            width = max(len(row) for row, _ in group)
            ids = torch.full((len(group), width), chars.pad_id, dtype=torch.long)
            answer_mask = torch.zeros((len(group), width), dtype=torch.bool)
            for i, (row, prompt_length) in enumerate(group):
                ids[i, : len(row)] = torch.tensor(row)
                answer_mask[i, prompt_length : len(row)] = True
            yield ids, answer_mask


def sequence_loss(
    logits: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor, prompt_weight: float
) -> torch.Tensor:
    """Mean cross-entropy on the answer tokens, plus `prompt_weight` times the mean on the
    prompt tokens. The prompt term is the ordinary language-model objective: predicting the
    telemetry's structure rewards attending to the previous tokens, the first half of the
    two-step attention that look-ups need, so that it forms sooner."""
    import torch

    chars = tier_vocabulary()
    targets = ids[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    answer = answer_mask[:, 1:]
    prompt = ~answer & (targets != chars.pad_id)
    loss = per_token[answer].mean()
    if prompt_weight > 0 and prompt.any():
        loss = loss + prompt_weight * per_token[prompt].mean()
    return loss


def heldout_accuracy(
    model: Any, *, per_grade: int = 200, seed: int = 1, name: str = "model"
) -> dict[int, float]:
    """Greedy accuracy per grade on held-out tasks, through the Hugging Face backend."""
    from trifecta.cognitive.backends.huggingface import HuggingFaceBackend

    backend = HuggingFaceBackend(model, build_tokenizer(), name=name, batch_size=200)
    verifier = TaskFamilyVerifier()
    accuracy: dict[int, float] = {}
    for grade in DIFFICULTIES:
        tasks = generate_tasks(per_grade, seed=seed, split="heldout", difficulties=[grade])
        outputs = backend.generate([t.prompt for t in tasks], max_new_tokens=ANSWER_TOKENS)
        right = sum(
            bool(verifier.verify(t.prompt, o.text)) for t, o in zip(tasks, outputs, strict=True)
        )
        accuracy[grade] = right / len(tasks)
    return accuracy


@dataclass(frozen=True)
class Phase:
    """A stretch of the recipe with its own optimiser and warm-up + cosine schedule."""

    steps: int
    learning_rate: float
    mix: Mapping[int, float]
    short_telemetry: bool = True
    style: Style | None = None  # how its worked answers are written (None: the tier's style)


def recipe(
    spec: TierSpec,
    steps: int,
    *,
    grown: bool,
    warm: bool,
    mix: Mapping[int, float] = TRAIN_MIX,
    refine_steps: int | None = None,
    refine_mix: Mapping[int, float] | None = None,
    refine_learning_rate: float | None = None,
) -> list[Phase]:
    """The phases of `spec`'s recipe: look-ups alone (a tier trained from scratch), the mix
    (`steps` in all with the look-ups), then the refine phase (`refine_mix` and
    `refine_learning_rate` override the recipe's). A warm start (a trained model of the same
    tier) runs the refine phase only. One schedule across phases left the later phase at a
    rate that erased the look-ups, hence one optimiser per phase."""
    refine = spec.refine_steps if refine_steps is None else refine_steps
    last = Phase(
        refine,
        spec.refine_learning_rate if refine_learning_rate is None else refine_learning_rate,
        REFINE_MIX if refine_mix is None else refine_mix,
        REFINE_SHORT_TELEMETRY,
        spec.refine_style,
    )
    if warm:
        return [last]
    lookups = 0 if grown else min(spec.lookup_steps, steps // 2)
    return [
        Phase(lookups, spec.lookup_learning_rate, {1: 1.0}),
        Phase(steps - lookups, spec.learning_rate, mix),
        last,
    ]


def train_tier(
    spec: TierSpec,
    *,
    seed: int = 0,
    steps: int | None = None,
    directory: Path | None = None,
    grow_from: Any | None = None,
    warm_start: Any | None = None,
    earlier: Mapping[str, Any] | None = None,
    refine_steps: int | None = None,
    eval_per_grade: int = 200,
    on_step: Callable[[int, float], None] | None = None,
    mix: Mapping[int, float] = TRAIN_MIX,
    prompt_weight: float | None = None,
    refine_mix: Mapping[int, float] | None = None,
    refine_learning_rate: float | None = None,
) -> TrainResult:
    """Train tier `spec` (from scratch, grown from the smaller trained model `grow_from`, or
    continued from `warm_start`, a trained model of this tier whose `training.json` record is
    `earlier`: the refine phase only); save it to `directory` when given (None: a dry run).
    `on_step(step, loss)` is called after every optimiser step (progress bars). The trained
    model is on `TrainResult.model`."""
    import torch

    from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM

    main_steps = spec.train_steps if steps is None else steps
    phases = recipe(
        spec,
        main_steps,
        grown=grow_from is not None,
        warm=warm_start is not None,
        mix=mix,
        refine_steps=refine_steps,
        refine_mix=refine_mix,
        refine_learning_rate=refine_learning_rate,
    )
    total = sum(phase.steps for phase in phases)
    if total < 1 or (warm_start is None and main_steps < 1):
        raise InvalidInput("must be at least 1", field="steps")
    torch.manual_seed(seed)
    if warm_start is not None:
        model = warm_start
    elif grow_from is not None:
        model = grow(grow_from, spec, seed=seed)
    else:
        model = CanonLlamaForCausalLM(llama_config(spec))
    model.train()
    # Each tier reads its own stretch of the stream, so a grown tier sees new tasks; a warm
    # start reads past the stretch its earlier training read.
    earlier_steps = int(earlier.get("steps", 0)) if earlier else 0
    stream_seed = seed * 7 + TIER_OFFSETS.get(spec.name, 0) + earlier_steps
    weight = spec.prompt_weight if prompt_weight is None else prompt_weight
    started = time.perf_counter()
    smoothed = math.nan
    step = 0
    for phase in phases:
        if phase.steps == 0:
            continue
        smoothed = _run_phase(model, phase, spec, stream_seed + step, weight, step, on_step)
        step += phase.steps
    seconds = time.perf_counter() - started
    model = shipped_precision(model)
    accuracy = (
        heldout_accuracy(model, per_grade=eval_per_grade, name=spec.name) if eval_per_grade else {}
    )
    result = TrainResult(
        tier=spec.name,
        seed=seed,
        steps=earlier_steps + total,
        seconds=float(earlier.get("seconds", 0.0) if earlier else 0.0) + seconds,
        parameters=sum(p.numel() for p in model.parameters()),
        final_loss=smoothed,
        heldout_accuracy=accuracy,
        directory=directory,
        grown_from=grow_from is not None or bool(earlier and earlier.get("grown")),
        model=model,
        refine_steps=phases[-1].steps,
        earlier_steps=earlier_steps,
        earlier_seconds=float(earlier.get("seconds", 0.0)) if earlier else 0.0,
        refine_mix=refine_mix,
        refine_learning_rate=refine_learning_rate,
    )
    if directory is not None:
        save_checkpoint(model, directory, record=result.record())
    log.debug("tier trained", **result.record())
    return result


def _run_phase(
    model: Any,
    phase: Phase,
    spec: TierSpec,
    stream_seed: int,
    prompt_weight: float,
    first_step: int,
    on_step: Callable[[int, float], None] | None,
) -> float:
    """`phase.steps` optimiser steps on `model`; returns the smoothed loss at the end."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=phase.learning_rate, betas=(0.9, 0.98), weight_decay=0.01
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, phase.steps // 20), phase.steps)
    batches = training_batches(
        stream_seed,
        spec.batch_size,
        phase.mix,
        style=phase.style or spec.scratchpad,
        short_telemetry=phase.short_telemetry,
    )
    smoothed = math.nan
    for step in range(first_step + 1, first_step + phase.steps + 1):
        ids, answer_mask = next(batches)
        loss = sequence_loss(model(input_ids=ids).logits, ids, answer_mask, prompt_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        smoothed = value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * value
        if on_step is not None:
            on_step(step, smoothed)
    return smoothed


def shipped_precision(model: Any) -> Any:
    """`model` in eval mode with its weights rounded to float16, the precision they ship in
    (half the bytes in the repository), so that held-out figures describe the shipped model."""
    import torch

    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.float16).to(torch.float32))
    return model
