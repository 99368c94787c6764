"""Autoregressive -> diffusion conversion with MoE upcycling (how RND1 was obtained).

RND1 took a pretrained autoregressive model, swapped its causal attention mask for a
bidirectional one and continued pretraining on the masked-token objective ("simple continual
pretraining", with a learning-rate warm-up: `train.py`). Here the source is one of the
cognitive layer's shipped Llama tiers: a plain Llama, or the Canon-Llama the tiers are now
(its Canon layers are copied into the diffusion model's, which compute the same mix). Its
dense FFN becomes `n_experts` experts by sparse upcycling (Komatsuzaki et al., 2022): every
expert starts as a copy of the FFN plus a little noise (so experts can diverge), the router
starts small and random. With `shift`, each position keeps predicting the next token as the
AR head did (Dream 7B's choice, Ye et al. 2025) instead of its own. Because the gates of the
selected experts sum to one, the upcycled block computes the dense FFN exactly when the noise
is zero, whatever the router picks (tested).

Fine-grained upcycling (`granularity` G > 1; He et al. 2024, NVIDIA, "Upcycling Large Language
Models into Mixture of Experts", arXiv:2410.07524, "virtual group" initialisation): the dense
FFN's hidden units are cut into G shards, each expert is one shard (width d_ff / G), and the E
experts form E / G virtual groups, each a whole copy of the FFN. The experts of a group share
one router row, so they tie and top-k (a multiple of G) selects whole groups. Scaling: the
normalised gates of a selected group sum to s_g / sum(s_selected), each shard getting 1/G of
that, so each shard's down projection is multiplied by G and the selected groups then sum to
exactly the dense FFN. With top-k below G (say 8 experts of a quarter width, top-2) only part
of the hidden units run per token and no scaling keeps the dense function, which is why a
top-k that is not a multiple of G is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from trifecta.core.errors import InvalidInput
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.model import DiffusionConfig, DiffusionLM

_FFN = ("gate_proj", "up_proj", "down_proj")
# The cognitive tiers' Llama with Canon layers (`cognitive/canon_llama.py`), read as files.
CANON_LLAMA = "trifecta_canon_llama"


def config_from_llama(
    folder: Path,
    n_experts: int,
    top_k: int,
    canon_width: int = 4,
    shift: bool = False,
    granularity: int = 1,
) -> DiffusionConfig:
    """The diffusion model's shape from a Llama `config.json`, with the MoE's width."""
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") not in ("llama", CANON_LLAMA) or not hf.get("tie_word_embeddings"):
        raise InvalidInput("expected a Llama checkpoint with tied embeddings", field="source")
    if hf.get("model_type") == CANON_LLAMA:
        canon_width = hf["canon_width"]  # the source's own Canon layers are kept
    if hf["num_key_value_heads"] != hf["num_attention_heads"]:
        raise InvalidInput("grouped-query attention is not supported", field="source")
    if not 1 <= top_k <= n_experts:
        raise InvalidInput(f"top_k {top_k} must be in 1..{n_experts}", field="top_k")
    if granularity < 1 or n_experts % granularity or hf["intermediate_size"] % granularity:
        raise InvalidInput(
            f"granularity {granularity} must divide the experts ({n_experts}) and the FFN "
            f"width ({hf['intermediate_size']})",
            field="granularity",
        )
    if top_k % granularity:
        raise InvalidInput(
            f"top_k {top_k} must be a multiple of granularity {granularity} (whole virtual "
            "groups, or the dense FFN is not kept)",
            field="top_k",
        )
    # A tier exported with byte fallback has 256 byte tokens after the task alphabet; the task
    # family never uses them, so the diffusion model keeps the alphabet's ids only.
    alphabet = CharTokenizer().vocab_size
    return DiffusionConfig(
        vocab_size=min(hf["vocab_size"], alphabet),
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"] // granularity,
        n_experts=n_experts,
        top_k=top_k,
        block_size=hf["max_position_embeddings"],
        norm_eps=hf["rms_norm_eps"],
        rope_theta=hf.get("rope_parameters", {}).get("rope_theta", 10000.0),
        canon_width=canon_width,
        shift=shift,
    )


def convert_llama(
    folder: Path,
    *,
    n_experts: int = 8,
    top_k: int = 2,
    noise: float = 0.01,
    router_std: float = 0.02,
    canon_width: int = 4,
    seed: int = 0,
    shift: bool = False,
    granularity: int = 1,
) -> DiffusionLM:
    """A DiffusionLM holding the checkpoint's weights, each FFN upcycled into experts.
    `noise` is relative: each expert gets N(0, (noise * std(W))^2) added to every copy.
    Canon layers start as the source's own (a Canon-Llama tier), or at zero (the identity).
    `granularity` > 1: expert e is shard e % G of the FFN, in virtual group e // G (module
    docstring)."""
    config = config_from_llama(folder, n_experts, top_k, canon_width, shift, granularity)
    width = config.d_ff  # each expert's share of the dense FFN's hidden units
    source = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    model = DiffusionLM(config)
    generator = torch.Generator().manual_seed(seed)
    embed = source["model.embed_tokens.weight"][: config.vocab_size]
    state: dict[str, torch.Tensor] = {"embed_tokens.weight": embed}
    state["norm.weight"] = source["model.norm.weight"]
    for i in range(config.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"{dst}{norm}.weight"] = source[f"{src}{norm}.weight"]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{dst}self_attn.{proj}.weight"] = source[f"{src}self_attn.{proj}.weight"]
        for e in range(n_experts):
            units = slice((e % granularity) * width, (e % granularity + 1) * width)
            for proj in _FFN:
                dense = source[f"{src}mlp.{proj}.weight"]  # (d_ff, D), down_proj (D, d_ff)
                shard = dense[:, units] * granularity if proj == "down_proj" else dense[units]
                jitter = torch.randn(shard.shape, generator=generator) * (noise * shard.std())
                state[f"{dst}moe.experts.{e}.{proj}.weight"] = shard + jitter
        groups = n_experts // granularity
        router = torch.randn((groups, config.d_model), generator=generator) * router_std
        # (E, D): a virtual group's experts share their row, so they tie and are chosen together
        state[f"{dst}moe.router.weight"] = router.repeat_interleave(granularity, dim=0)
        state[f"{dst}moe.selection_bias"] = torch.zeros(n_experts)
        if config.canon_width:
            canon = source.get(f"model.canons.{i}.weight")
            zero = torch.zeros(config.canon_width, config.d_model)
            state[f"{dst}canon.weight"] = zero if canon is None else canon
    model.load_state_dict(state, strict=True)
    return model
