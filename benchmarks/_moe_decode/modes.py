"""Decoding modes timed against each other: each decodes the same tasks in batches and keeps
its tokens/s per round, its verdicts, forward passes and expert calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from trifecta.core.tasks import Task
    from trifecta.generative.decoding import DecodeConfig, Decoder
    from trifecta.generative.model import Routing
    from trifecta.generative.selection import ExpertMask

HARD = (3, 4, 5)
BATCH = 50


def llada_config() -> DecodeConfig:
    """The baseline a skeptic names, LLaDA's own sampler: one token per denoising step, low-
    confidence remasking, semi-autoregressive blocks of 4 (the size the model was trained to
    fill), no cache."""
    from trifecta.generative.decoding import DecodeConfig

    return DecodeConfig(steps=24, gen_length=24, block_length=4, threshold=None, cache=False)


def served_config(**changes: object) -> DecodeConfig:
    """The served decoding (`DecodeConfig`'s defaults), with `changes`."""
    from trifecta.generative.decoding import DecodeConfig

    return DecodeConfig.model_validate(DecodeConfig().model_dump() | changes)


@dataclass
class Mode:
    name: str
    config: DecodeConfig
    # an expert mask: (n_layers, E) bool or an ExpertMask (with its merge plan); None: every expert
    active: torch.Tensor | ExpertMask | None = None
    batch: int = BATCH
    speeds: list[float] = field(default_factory=list)
    correct: np.ndarray | None = None  # (tasks,) bool, the last run's verdicts
    passes: int = 0
    positions: int = 0  # token positions pushed through the network, the last run
    expert_calls: int = 0
    touched_per_pass: float = 0.0


def mask_routing(mask: torch.Tensor | ExpertMask | None, n_experts: int) -> Routing:
    """A fresh Routing for a mask: a bool table, or an ExpertMask whose merge plan (if any)
    goes with it, as the service routes a capsule's mask."""
    from trifecta.generative.model import Routing
    from trifecta.generative.selection import ExpertMask

    if isinstance(mask, ExpertMask):
        return Routing(active=mask.active(n_experts), merge=mask.merge_tensor())
    return Routing(active=mask)


def run_mode(decoder: Decoder, mode: Mode, tasks: list[Task]) -> None:
    """Decode `tasks` once in `mode`, appending its tokens/s and keeping its verdicts."""
    from trifecta.generative.decoding import tokens_generated
    from trifecta.generative.sequences import answer_of

    routing = mask_routing(mode.active, decoder.model.config.n_experts)
    verdicts, tokens, passes, positions, seconds = [], 0, 0, 0, 0.0
    for i in range(0, len(tasks), mode.batch):
        chunk = tasks[i : i + mode.batch]
        started = time.perf_counter()
        results, stats = decoder.decode([t.prompt for t in chunk], mode.config, routing)
        seconds += time.perf_counter() - started
        tokens += tokens_generated(results)
        passes += stats.forward_passes
        positions += stats.positions_computed
        verdicts += [answer_of(r.text) == t.answer for r, t in zip(results, chunk, strict=True)]
    mode.speeds.append(tokens / seconds)
    mode.correct = np.array(verdicts)
    mode.passes, mode.positions, mode.expert_calls = passes, positions, routing.calls
    # distinct (layer, expert) weights read per forward pass, averaged over the passes
    n_layers = decoder.model.config.n_layers
    mode.touched_per_pass = routing.calls / max(1, passes) / n_layers
