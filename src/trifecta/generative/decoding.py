"""Decoding: fill the response's masks over a few denoising steps, many requests at once.

Semi-autoregressive blocks (LLaDA): the response region is cut into blocks of
`block_length` positions, decoded left to right; inside a block each step predicts every
masked position and keeps the most confident predictions, the rest stay masked for the next
step (LLaDA's low-confidence remasking). How many are kept per step:

- `threshold=None`: a fixed schedule, ceil(masked left / steps left) per step; with
  `steps == gen_length` that is one token per step, the baseline decoders compare against.
- `threshold=x` (Fast-dLLM, Wu et al. 2025, "parallel decoding"): every masked position whose
  confidence exceeds x, and at least what the schedule needs (so a block always finishes
  within its steps and at least one token moves per step).

The rule is the published one (checked against LLaDA's and Fast-dLLM's reference code, their
`generate.py`): greedy, each position's candidate is its most likely token and its confidence
that token's softmax probability; only the current block's masked positions compete; with a
threshold, Fast-dLLM keeps the most confident position and every other one above the
threshold, looping until the block is full. Here a block also has a step budget, so the
floor is ceil(masked left / steps left): one whenever a block has at least as many steps as
positions (the served 24 steps over 24 positions), where it is Fast-dLLM's rule exactly. One
difference: `<mask>`, `<pad>` and `<bos>` are banned before the softmax (a response never
holds them), so the confidence is over the tokens a response can hold.

With `cache=True` (Fast-dLLM's approximate "dual cache") one full forward pass at the start
of each block computes the keys and values of every position; the block's later steps
recompute only the block's own positions and read everything else from that cache. The cache
is approximate: positions outside the block do not see what the block fills until the next
block's refresh.

Requests are batched: rows are left-padded so their response regions share the same columns,
and each row keeps its own tokens-kept count per step. A row whose block is already full
rides along unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trifecta.core.errors import InvalidInput
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.model import DiffusionLM, Routing
from trifecta.generative.sequences import encode_prompts


class DecodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The defaults are the served decoding. Threshold and block length were chosen on the dev
    # split (`evaluate.dev_tasks`, never the held-out tasks) by `benchmarks/moe_decode.py
    # --sweep`: of the settings at least 2.5x LLaDA's one-token-per-step speed there, the one
    # with the smallest accuracy cost (docs/generative.md, "Decoding").
    gen_length: int = Field(default=24, gt=0, description="response positions per request")
    steps: int = Field(default=24, description="denoising steps over the whole response")
    block_length: int = Field(default=8, gt=0)
    threshold: float | None = Field(default=0.99, gt=0, lt=1)
    cache: bool = True

    @model_validator(mode="after")
    def _fits(self) -> DecodeConfig:
        if self.steps <= 0:
            raise InvalidInput(f"must be positive, got {self.steps}", field="steps")
        if self.gen_length % self.block_length:
            raise InvalidInput(
                f"{self.block_length} does not divide gen_length {self.gen_length}",
                field="block_length",
            )
        if self.steps < self.blocks:
            raise InvalidInput(
                f"{self.steps} steps cannot fill {self.blocks} blocks (one step per block at "
                "least)",
                field="steps",
            )
        return self

    @property
    def blocks(self) -> int:
        return self.gen_length // self.block_length

    def block_steps(self) -> list[int]:
        """The step budget of each block (the first blocks get the remainder)."""
        base, extra = divmod(self.steps, self.blocks)
        return [base + (1 if b < extra else 0) for b in range(self.blocks)]


@dataclass
class Decoded:
    text: str  # the response up to the first `<eos>`
    tokens: list[int]  # every response position's token
    steps: int  # forward passes during which this request still had masks


@dataclass
class DecodeStats:
    forward_passes: int
    full_passes: int
    positions_computed: int  # token positions pushed through the network, batch included


class Decoder:
    """Batched block-wise decoding of one model (see the module docstring)."""

    def __init__(self, model: DiffusionLM, tokenizer: CharTokenizer | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer or CharTokenizer()
        t = self.tokenizer
        # Never predicted in a response: the model must commit to a real token.
        self.banned = torch.tensor([t.mask_id, t.pad_id, t.bos_id])

    @torch.no_grad()
    def decode(
        self, prompts: Sequence[str], config: DecodeConfig, routing: Routing | None = None
    ) -> tuple[list[Decoded], DecodeStats]:
        t = self.tokenizer
        batch = encode_prompts(prompts, t, config.gen_length, self.model.config.block_size)
        x, positions, valid, start = batch.ids, batch.positions, batch.valid, batch.start
        B = x.shape[0]
        steps = torch.zeros(B, dtype=torch.long)
        stats = DecodeStats(0, 0, 0)
        L = config.block_length
        shift = int(self.model.config.shift)
        for b, budget in enumerate(config.block_steps()):
            s, e = start + b * L, start + (b + 1) * L
            caches = None
            for k in range(budget):
                masked = x[:, s:e] == t.mask_id  # (B, L)
                if not masked.any():
                    break
                # A shifted model reads each position's token off the position before it.
                lo = s - shift
                if config.cache and caches is not None:
                    logits = self.model.forward_span(
                        x[:, lo:e], positions[:, lo:e], valid, (lo, e), caches, routing
                    )[:, :L]
                    stats.positions_computed += B * (e - lo)
                else:
                    full, caches = self.model(x, positions, valid, routing)
                    logits = full[:, lo : e - shift]
                    stats.full_passes += 1
                    stats.positions_computed += int(valid.sum())
                stats.forward_passes += 1
                steps += masked.any(dim=1).long()
                logits[..., self.banned] = float("-inf")
                confidence, predicted = logits.softmax(dim=-1).max(dim=-1)  # (B, L) each
                confidence = confidence.masked_fill(~masked, -1.0)
                keep = self._keep(confidence, masked, budget - k, config.threshold)
                block = x[:, s:e]
                block[keep] = predicted[keep]
        results = []
        for i in range(B):
            response = x[i, start:].tolist()
            end = response.index(t.eos_id) if t.eos_id in response else len(response)
            results.append(Decoded(t.decode(response[:end]), response, int(steps[i])))
        return results, stats

    @staticmethod
    def _keep(
        confidence: torch.Tensor, masked: torch.Tensor, steps_left: int, threshold: float | None
    ) -> torch.Tensor:
        """(B, L) bool: the positions to unmask this step (see the module docstring)."""
        remaining = masked.sum(dim=1)  # (B,)
        need = torch.ceil(remaining.float() / steps_left).long()  # finishes within budget
        order = confidence.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        keep = rank < need[:, None]
        if threshold is not None:
            keep |= confidence > threshold
        return keep & masked


def tokens_generated(results: Sequence[Decoded]) -> int:
    """Response positions decoded (every position of the region, `<eos>` padding included)."""
    return sum(len(r.tokens) for r in results)
