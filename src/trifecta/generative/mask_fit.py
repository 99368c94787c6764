"""A half mask fitted to the full model's predictions: which copy of each shard to keep.

On a fine-grained model (expert e is shard e % G of the FFN) a half mask keeps one copy of
every shard (`selection.half_mask` picks each shard's most-used copy). Which copy a capsule
needs is not what traffic shows: the copies were upcycled from one FFN and trained apart, so
what matters is how the masked model's predictions differ from the full model's. This rule
measures exactly that, the KL divergence of the masked model's predicted token distributions
from the full model's at the masked response positions of the capsule's reference prompts
(their responses as the full model decoded them, masked as training masks them), and per
layer keeps the copies that minimise it: the layer-wise reconstruction search of expert
pruning (Lu et al. 2024, "Not All Experts are Equal"), with the model's output as the target.
Layers are visited once, in order, each choice made with the earlier layers' fixed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

from trifecta.core.errors import InvalidInput
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import Routing
from trifecta.generative.selection import ExpertMask
from trifecta.generative.sequences import encode_prompts
from trifecta.generative.train import draw_masks


def copy_choices(kept: Sequence[int], granularity: int, n_experts: int) -> Iterator[list[int]]:
    """Every layer choice that keeps the shards of `kept`, each through any of its copies."""
    options = [range(e % granularity, n_experts, granularity) for e in kept]
    seen: set[tuple[int, ...]] = set()
    for combo in itertools.product(*options):
        key = tuple(sorted(combo))
        if len(set(key)) == len(key) and key not in seen:
            seen.add(key)
            yield list(key)


def fitted_half_mask(
    decoder: Decoder,
    start: ExpertMask,
    granularity: int,
    prompts: Sequence[str],
    config: DecodeConfig | None = None,
    seed: int = 0,
) -> tuple[ExpertMask, float, float]:
    """`start` (a half mask) with each layer's copies chosen to minimise the divergence from
    the full model on `prompts`; the mask and the divergence (nats per masked position)
    before and after."""
    if granularity < 2:
        raise InvalidInput(
            f"a fitted half mask needs shards, got {granularity}", field="granularity"
        )
    if not prompts:
        raise InvalidInput("no reference prompts to fit on", field="prompts")
    model, tokenizer = decoder.model, decoder.tokenizer
    config = config or DecodeConfig()
    E, shift = model.config.n_experts, int(model.config.shift)
    results, _ = decoder.decode(prompts, config)
    batch = encode_prompts(prompts, tokenizer, config.gen_length, model.config.block_size)
    ids = batch.ids.clone()
    response = ids[:, batch.start :]  # (B, G) a view
    response[:] = torch.tensor([r.tokens for r in results])
    generator = torch.Generator().manual_seed(seed)
    rows, length = response.shape
    masked, _, _ = draw_masks(rows, length, generator, 0.5, config.block_length)
    response[masked] = tokenizer.mask_id
    lo, hi = batch.start - shift, batch.start + config.gen_length - shift

    @torch.no_grad()
    def log_probs(active: torch.Tensor | None) -> torch.Tensor:
        logits, _ = model(ids, batch.positions, batch.valid, Routing(active=active))
        return logits[:, lo:hi].log_softmax(dim=-1)[masked]  # (masked positions, vocab)

    full = log_probs(None)

    def divergence(layers: list[list[int]]) -> float:
        ours = log_probs(ExpertMask(layers=layers).active(E))
        return float((full.exp() * (full - ours)).sum(dim=-1).mean())

    layers = [sorted(layer) for layer in start.layers]
    before = best = divergence(layers)
    for i, kept in enumerate(start.layers):
        for choice in copy_choices(kept, granularity, E):
            if choice == layers[i]:
                continue
            trial = [choice if j == i else layer for j, layer in enumerate(layers)]
            value = divergence(trial)
            if value < best:
                best, layers[i] = value, choice
    return ExpertMask(layers=layers, source="learned"), before, best
