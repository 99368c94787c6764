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

    def record(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "seed": self.seed,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "parameters": self.parameters,
            "final_loss": round(self.final_loss, 4),
            "grown": self.grown_from,
            "heldout_accuracy": {str(g): round(a, 4) for g, a in self.heldout_accuracy.items()},
        }


def training_batches(
    seed: int,
    batch_size: int,
    mix: Mapping[int, float] = TRAIN_MIX,
    *,
    pool_batches: int = 8,
    style: Style = "operands",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless `(input_ids, answer_mask)` batches from the train split, right-padded with
    `<pad>`; `answer_mask` marks the answer and `<eos>` tokens. Tasks are drawn `pool_batches`
    batches at a time and grouped by length, so that short prompts (plain sums) are not padded
    to the width of long ones (telemetry look-ups): about a third fewer positions to compute."""
    import torch

    chars = tier_vocabulary()
    stream = iter_tasks(seed=seed, split="train", difficulties=mix, short_telemetry=True)
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


def train_tier(
    spec: TierSpec,
    *,
    seed: int = 0,
    steps: int | None = None,
    directory: Path | None = None,
    grow_from: Any | None = None,
    eval_per_grade: int = 200,
    on_step: Callable[[int, float], None] | None = None,
    mix: Mapping[int, float] = TRAIN_MIX,
    prompt_weight: float | None = None,
) -> TrainResult:
    """Train tier `spec` (from scratch, or grown from the smaller trained model `grow_from`);
    save it to `directory` when given (None: a dry run). `on_step(step, loss)` is called after
    every optimiser step (progress bars). The trained model is on `TrainResult.model`."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM

    total = spec.train_steps if steps is None else steps
    if total < 1:
        raise InvalidInput("must be at least 1", field="steps")
    torch.manual_seed(seed)
    if grow_from is not None:
        model = grow(grow_from, spec, seed=seed)
    else:
        model = CanonLlamaForCausalLM(llama_config(spec))
    model.train()
    # Each tier reads its own stretch of the stream, so a grown tier sees new tasks.
    stream_seed = seed * 7 + TIER_OFFSETS.get(spec.name, 0)
    lookup_steps = min(spec.lookup_steps, total // 2) if grow_from is None else 0
    # Two phases, each with its own optimiser and warm-up + cosine schedule: look-ups alone
    # (when the tier has that phase), then the full mix at the tier's learning rate. One
    # schedule across both left the second phase at a rate that erased the look-ups.
    phases = [
        (lookup_steps, spec.lookup_learning_rate, {1: 1.0}),
        (total - lookup_steps, spec.learning_rate, mix),
    ]
    weight = spec.prompt_weight if prompt_weight is None else prompt_weight
    started = time.perf_counter()
    smoothed = math.nan
    step = 0
    for phase_steps, learning_rate, phase_mix in phases:
        if phase_steps == 0:
            continue
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01
        )
        schedule = get_cosine_schedule_with_warmup(
            optimizer, max(1, phase_steps // 20), phase_steps
        )
        batches = training_batches(
            stream_seed + step, spec.batch_size, phase_mix, style=spec.scratchpad
        )
        for _ in range(phase_steps):
            step += 1
            ids, answer_mask = next(batches)
            loss = sequence_loss(model(input_ids=ids).logits, ids, answer_mask, weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            smoothed = value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * value
            if on_step is not None:
                on_step(step, smoothed)
    seconds = time.perf_counter() - started
    model = shipped_precision(model)
    accuracy = (
        heldout_accuracy(model, per_grade=eval_per_grade, name=spec.name) if eval_per_grade else {}
    )
    result = TrainResult(
        tier=spec.name,
        seed=seed,
        steps=total,
        seconds=seconds,
        parameters=sum(p.numel() for p in model.parameters()),
        final_loss=smoothed,
        heldout_accuracy=accuracy,
        directory=directory,
        grown_from=grow_from is not None,
        model=model,
    )
    if directory is not None:
        save_checkpoint(model, directory, record=result.record())
    log.debug("tier trained", **result.record())
    return result


def shipped_precision(model: Any) -> Any:
    """`model` in eval mode with its weights rounded to float16, the precision they ship in
    (half the bytes in the repository), so that held-out figures describe the shipped model."""
    import torch

    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.float16).to(torch.float32))
    return model
