"""Llama with a Canon layer before each attention: the tiers' architecture, as an HF model.

A Canon layer (Allen-Zhu, *Physics of Language Models: Part 4.1, Architecture Design and the
Magic of Canon Layers*, arXiv:2512.17351) adds to every token a learnt, per-feature weighted
sum of the last `canon_width` tokens, itself included: `y_t = x_t + sum_j w_j * x_(t-j)`, a
residual causal depthwise convolution. In the edge model it took look-ups from 32% to 99.5%
(docs/edge.md): the "which sensor do these digits belong to" step becomes one local mix, and
attention is left with the content look-up. The same idea is written here for `transformers`
(the layers may not import each other's code), placed as in the edge model: on each block's
input, before the attention's norm.

The model is a `LlamaForCausalLM` subclass with its own `model_type`, registered with the
Auto classes when this module is imported, so a tier saves and loads as an ordinary Hugging
Face directory (`config.json` + safetensors) through `AutoModelForCausalLM.from_pretrained`.

Decoding with a KV cache needs each layer's last `canon_width - 1` inputs. They are kept in
the same `DynamicCache`, as extra cache layers after the attention layers (keys and values
both hold the inputs, `[batch, 1, seq, hidden]`), so that everything that stacks, merges,
pads or slices a cache along its sequence axis (continuous batching, the prefix cache)
carries the Canon state with it unchanged. Inputs at padding positions (mask 0) are stored as
zeros, which is what the first tokens of an unpadded sequence see (zero padding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel

MODEL_TYPE = "trifecta_canon_llama"


@strict
class CanonLlamaConfig(LlamaConfig):
    """`LlamaConfig` plus the Canon layers' look-back (0: none, a plain Llama)."""

    model_type = MODEL_TYPE
    canon_width: int = 4


class CanonMix(nn.Module):
    """y_t = x_t + sum_(j < width) weight[j] * x_(t-j), per feature; zero weights at the start
    (the identity). Inputs before the first position count as zero."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(width, hidden))

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        cache: Cache | None,
        cache_index: int,
        mask: torch.Tensor | None,  # (B, T) of this chunk, 1 = real token
    ) -> torch.Tensor:
        length = x.shape[1]
        # `where`, not a product: a padding position whose attention row was fully masked can
        # hold NaN, and NaN * 0 is NaN, which the convolution would carry into real tokens.
        stored = x if mask is None else torch.where(mask[:, :, None].bool(), x, x.new_zeros(()))
        if cache is not None:
            history, _ = cache.update(stored[:, None], stored[:, None], cache_index)
            history = history[:, 0]  # (B, S, d), S >= T: earlier inputs, then this chunk
        else:
            history = stored
        span = length + self.width - 1
        history = history[:, -span:]
        padded = F.pad(history, (0, 0, span - history.shape[1], 0))  # (B, T + width - 1, d)
        out = x
        for j in range(self.width):
            start = self.width - 1 - j
            out = out + self.weight[j] * padded[:, start : start + length]
        return out


class CanonLlamaModel(LlamaModel):
    """`LlamaModel` whose blocks each start with a `CanonMix` (see the module docstring)."""

    config: CanonLlamaConfig

    def __init__(self, config: CanonLlamaConfig):
        super().__init__(config)
        self.canons = nn.ModuleList(
            CanonMix(config.hidden_size, config.canon_width)
            for _ in range(config.num_hidden_layers if config.canon_width else 0)
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        # LlamaModel.forward, with the Canon mix before each block.
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            # A lazily grown cache: it takes the Canon layers after the attention layers.
            past_key_values = DynamicCache()
        if use_cache and self.canons and isinstance(past_key_values, DynamicCache):
            # `generate()` sizes its cache from the config (one layer per attention layer):
            # give it the Canon layers too.
            wanted = 2 * self.config.num_hidden_layers
            if past_key_values.layer_class_to_replicate is None:
                while len(past_key_values.layers) < wanted:
                    past_key_values.layers.append(DynamicLayer())
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(  # type: ignore[assignment]
                seen, seen + inputs_embeds.shape[1], device=inputs_embeds.device
            ).unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        length = inputs_embeds.shape[1]
        chunk_mask = attention_mask[:, -length:] if attention_mask is not None else None
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        layers = self.config.num_hidden_layers
        for index, block in enumerate(self.layers[:layers]):
            if self.canons:
                cache = past_key_values if use_cache else None
                hidden = self.canons[index](hidden, cache, layers + index, chunk_mask)
            hidden = block(
                hidden,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )
        hidden = self.norm(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values)


class CanonLlamaForCausalLM(LlamaForCausalLM):
    """The causal LM over `CanonLlamaModel` (tied head, generation, `from_pretrained`)."""

    config_class = CanonLlamaConfig
    config: CanonLlamaConfig

    def __init__(self, config: CanonLlamaConfig):
        super().__init__(config)
        self.model = CanonLlamaModel(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CanonMix):
            with torch.no_grad():
                module.weight.zero_()


AutoConfig.register(MODEL_TYPE, CanonLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(CanonLlamaConfig, CanonLlamaForCausalLM, exist_ok=True)
