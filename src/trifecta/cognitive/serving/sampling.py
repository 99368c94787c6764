"""One decoding step for a whole batch: the next token of every row, its log-probability,
the entropy of the distribution it came from, and the top alternatives.

Log-probabilities and entropy are those of the model's unfiltered distribution (temperature 1,
no top-p), the quantity the OpenAI API reports as `logprobs` and the escalation policy reads;
temperature and top-p only change which token is drawn.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trifecta.cognitive.serving.scripted_step import script


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its next token."""

    temperature: float
    top_p: float
    top_logprobs: int
    generator: torch.Generator | None  # seeded per request, so a batch and a lone run agree


@dataclass(frozen=True)
class StepChoice:
    token_id: int
    logprob: float
    entropy: float
    top: tuple[tuple[int, float], ...]  # (token id, log-prob), most likely first


def _draw(logits: torch.Tensor, rule: RowSampling) -> int:
    scaled = logits / rule.temperature
    if rule.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= rule.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rule.generator).item())


def _distribution(
    logits: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's log-probabilities, entropy, greedy token, its log-probability and the top-k
    alternatives (values, ids; empty when k is 0). Run scripted (`_scripted`): one GIL
    release for the step's sampling arithmetic instead of one per operation."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    entropy = -torch.where(probs > 0, probs * logprobs, torch.zeros_like(probs)).sum(-1)
    chosen = logits.argmax(dim=-1)
    chosen_logprob = logprobs.gather(1, chosen[:, None]).squeeze(1)
    if k > 0:
        values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    else:
        values, indices = logprobs[:, :0], chosen[:, None][:, :0]
    return logprobs, entropy, chosen, chosen_logprob, values, indices


@functools.cache
def _scripted() -> Any:
    return script(_distribution)


def choose_next(logits: torch.Tensor, rules: Sequence[RowSampling]) -> list[StepChoice]:
    """Pick each row's next token from `logits` [rows, vocab]."""
    k = max((rule.top_logprobs for rule in rules), default=0)
    logprobs, entropy, chosen, chosen_logprob, values, indices = _scripted()(logits, k)
    drawn = [row for row, rule in enumerate(rules) if rule.temperature > 0]
    if drawn:
        chosen, chosen_logprob = chosen.clone(), chosen_logprob.clone()
        for row in drawn:
            chosen[row] = _draw(logits[row].float(), rules[row])
            chosen_logprob[row] = logprobs[row, chosen[row]]
    ids, lps, ents = chosen.tolist(), chosen_logprob.tolist(), entropy.tolist()
    if k == 0:  # no alternatives asked for (the loop's cascade): no per-row tuples to cut
        return [
            StepChoice(token_id, logprob, entropy_, ())
            for token_id, logprob, entropy_ in zip(ids, lps, ents, strict=True)
        ]
    top_ids: list[list[int]] = indices.tolist()
    top_lps: list[list[float]] = values.tolist()
    return [
        StepChoice(
            token_id=ids[row],
            logprob=lps[row],
            entropy=ents[row],
            top=tuple(
                zip(
                    top_ids[row][: rule.top_logprobs],
                    top_lps[row][: rule.top_logprobs],
                    strict=True,
                )
            ),
        )
        for row, rule in enumerate(rules)
    ]
