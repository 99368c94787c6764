"""Growing a trained tier into the next, larger one without changing what it computes.

The recipe trains the small tier from scratch, then grows it into the medium architecture and
trains on, then grows that into the large one (progressive growth, after Net2Net: Chen et al.,
2016, "Net2Net: Accelerating Learning via Knowledge Transfer", arXiv:1511.05641). Each larger
tier thus starts from everything the smaller one learnt and adds capacity and training, which
on a CPU budget of minutes is what makes it measurably better on the harder grades.

The grown model computes exactly the function of the smaller one at first: new hidden
dimensions, attention heads and MLP neurons are read from but never written to (their output
weights start at zero), new layers are appended as identity blocks (zero output projections),
and RMSNorm gains (and epsilon) are scaled so that the normalisation over the wider,
zero-padded hidden state is unchanged. Training then moves the zero weights like any other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trifecta.cognitive.checkpoints import llama_config
from trifecta.cognitive.tiers import TierSpec
from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM


def _check(small: LlamaForCausalLM, spec: TierSpec) -> None:
    config = small.config
    head_dim = config.hidden_size // config.num_attention_heads
    problems = []
    if spec.hidden_size < config.hidden_size or spec.layers < config.num_hidden_layers:
        problems.append("the target is not larger")
    if spec.intermediate_size < config.intermediate_size or spec.heads < config.num_attention_heads:
        problems.append("the target has fewer MLP neurons or heads")
    if spec.hidden_size // spec.heads != head_dim:
        problems.append(f"the head width must stay {head_dim}")
    if problems:
        raise InvalidInput(f"cannot grow into {spec.name}: " + "; ".join(problems), field="tier")


def grow(small: LlamaForCausalLM, spec: TierSpec, *, seed: int = 0) -> LlamaForCausalLM:
    """A `spec`-sized Llama computing the same function as `small` (new weights seeded)."""
    import torch

    from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM

    _check(small, spec)
    torch.manual_seed(seed)
    large = CanonLlamaForCausalLM(llama_config(spec))
    old, new = small.model, large.model
    d0, d1 = small.config.hidden_size, spec.hidden_size
    gain = math.sqrt(d0 / d1)
    with torch.no_grad():
        _embed(new.embed_tokens.weight, old.embed_tokens.weight)
        for index, block in enumerate(new.layers):
            if index < len(old.layers):
                _copy_block(block, old.layers[index], gain)
            else:  # an appended layer: an identity block until training moves it
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()
                block.input_layernorm.weight.fill_(gain)
                block.post_attention_layernorm.weight.fill_(gain)
        _norm(new.norm.weight, old.norm.weight, gain)
        # Canon mixes are per feature: old features keep their weights; new features and the
        # appended layers' mixes start at zero (the identity).
        old_canons = getattr(old, "canons", ())
        for index, canon in enumerate(getattr(new, "canons", ())):
            canon.weight.zero_()
            if index < len(old_canons):
                source = old_canons[index].weight
                canon.weight[: source.shape[0], : source.shape[1]] = source
        # The mean square now runs over d1 dimensions of which d1 - d0 are zero: scaling the
        # epsilon the same way keeps the normalisation exact.
        large.config.rms_norm_eps = small.config.rms_norm_eps * d0 / d1
        for module in large.modules():
            if hasattr(module, "variance_epsilon"):
                setattr(module, "variance_epsilon", large.config.rms_norm_eps)  # noqa: B010
    large.tie_weights()
    return large


def _embed(target: torch.Tensor, source: torch.Tensor) -> None:
    target.zero_()
    target[: source.shape[0], : source.shape[1]] = source


def _norm(target: torch.Tensor, source: torch.Tensor, gain: float) -> None:
    target.fill_(gain)
    target[: source.shape[0]] = source * gain


def _read(target: torch.Tensor, source: torch.Tensor) -> None:
    """A weight that reads the hidden state: old block copied, new rows/columns keep their
    random values (new columns read dimensions that are zero, so they change nothing)."""
    target[: source.shape[0], : source.shape[1]] = source


def _write(target: torch.Tensor, source: torch.Tensor) -> None:
    """A weight that writes to the residual stream: old block copied, the rest silent."""
    target.zero_()
    target[: source.shape[0], : source.shape[1]] = source


def _copy_block(block: Any, old: Any, gain: float) -> None:
    attention, old_attention = block.self_attn, old.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        _read(getattr(attention, name).weight, getattr(old_attention, name).weight)
    _write(attention.o_proj.weight, old_attention.o_proj.weight)
    _read(block.mlp.gate_proj.weight, old.mlp.gate_proj.weight)
    _read(block.mlp.up_proj.weight, old.mlp.up_proj.weight)
    _write(block.mlp.down_proj.weight, old.mlp.down_proj.weight)
    _norm(block.input_layernorm.weight, old.input_layernorm.weight, gain)
    _norm(block.post_attention_layernorm.weight, old.post_attention_layernorm.weight, gain)
