"""One forward pass for a whole continuous-batching step: every running request's next token and
every newcomer's prompt together, over the replica's preallocated slot cache.

This is the iteration-level step of Orca and vLLM (a step mixes prefills and decodes, "chunked
prefill" in vLLM's words) written for Llama-family models on a CPU. It runs the model's own
modules (embedding, norms, projections, rotary embedding, MLP, head, Canon weights) and writes
only the glue `transformers` has no form for: keys written in place at each row's own column
and attention masked per row, which its caches (one shared length per batch, or a left-padded
`DynamicCache` that is re-stacked whenever a row joins or leaves) do not offer. vLLM likewise
ships its own model code around its KV layout rather than running Hugging Face's forward.
Because that glue re-implements what the model's `forward` does, `check_agrees` runs both on
one prompt when a replica starts and refuses a model whose logits differ.

Shapes: n rows in the step, T tokens fed in all (a decoding row feeds 1, a newcomer its
prompt), L the attended width (the longest row after the step), d the hidden size, h / kv
query / key-value heads, hd the head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from trifecta.cognitive.serving.slot_cache import SlotCache
from trifecta.core.errors import InvalidInput


@dataclass(frozen=True)
class StepRows:
    """What each of the first n slots is fed this step: `chunks[r]` tokens from column
    `starts[r]` (the positions the slot already holds)."""

    starts: list[int]
    chunks: list[list[int]]


class SlotForward:
    """A Llama (or the tiers' Canon Llama) forward over a `SlotCache`."""

    def __init__(self, model: Any, slots: int):
        if not isinstance(model, LlamaForCausalLM):
            raise InvalidInput(
                f"continuous batching serves Llama-family models; got {type(model).__name__}",
                field="model_path",
            )
        config = model.config
        self.model = model
        self.layers = list(model.model.layers[: config.num_hidden_layers])
        self.canons = list(getattr(model.model, "canons", None) or [])
        attention = self.layers[0].self_attn
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(attention.head_dim)
        self.scaling = attention.scaling
        self.context_length = int(config.max_position_embeddings)
        shapes: list[tuple[int, ...]] = []
        for _ in self.layers:
            shapes += [(self.kv_heads, self.head_dim)] * 2  # keys, values
        shapes += [(int(config.hidden_size),)] * len(self.canons)  # each Canon layer's inputs
        self.cache = SlotCache(slots, self.context_length, shapes)

    def step(self, rows: StepRows) -> torch.Tensor:
        """Feed every row its chunk; the logits after each row's last fed token [n, vocab].

        The fed tokens are packed into one sequence of T tokens (no padding: a decoding row
        costs one token however long a newcomer's prompt is); only attention is per row, each
        token over its own row's columns up to its position."""
        n = len(rows.chunks)
        counts = torch.tensor([len(chunk) for chunk in rows.chunks])
        ids = torch.tensor([token for chunk in rows.chunks for token in chunk])  # (T,)
        owner = torch.repeat_interleave(torch.arange(n), counts)  # (T,) each token's row
        first = torch.cumsum(counts, 0) - counts  # (n,) each row's first token in the pack
        positions = torch.tensor(rows.starts)[owner] + torch.arange(len(ids)) - first[owner]
        attended = int(positions.max()) + 1  # L
        visible = torch.arange(attended)[None, :] <= positions[:, None]  # (T, L)
        x = self.model.model.embed_tokens(ids)  # (T, d)
        cos, sin = self.model.model.rotary_emb(x, positions[None])  # (1, T, hd) each
        for index, layer in enumerate(self.layers):
            if self.canons:
                x = self._canon(index, x, owner, positions)
            h = layer.input_layernorm(x)
            x = x + self._attend(index, layer, h, (cos, sin), owner, positions, visible, n)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = x[torch.cumsum(counts, 0) - 1]  # (n, d): each row's last fed token
        logits: torch.Tensor = self.model.lm_head(self.model.model.norm(last))
        return logits

    def check_agrees(self, tolerance: float = 1e-3) -> None:
        """Refuse a model whose own `forward` this one does not reproduce (an architecture
        this glue does not know): a prompt fed in two chunks against one full forward."""
        config = self.model.config
        length = max(2, min(8, self.context_length))
        ids = [(3 + 5 * i) % config.vocab_size for i in range(length)]
        split = length // 2
        with torch.inference_mode():
            expected = self.model(torch.tensor([ids])).logits[0, [split - 1, length - 1]]
            first = self.step(StepRows([0], [ids[:split]]))
            second = self.step(StepRows([split], [ids[split:]]))
        got = torch.cat([first, second]).float()
        if not torch.allclose(got, expected.float(), atol=tolerance, rtol=tolerance):
            error = float((got - expected).abs().max())
            raise InvalidInput(
                f"{type(self.model).__name__} ({config.model_type}) computes what the "
                f"continuous-batching forward does not (logits differ by {error:.3g})",
                field="model_path",
            )

    def _attend(
        self,
        index: int,
        layer: Any,
        h: torch.Tensor,  # (T, d), normed
        rotary: tuple[torch.Tensor, torch.Tensor],
        owner: torch.Tensor,  # (T,)
        positions: torch.Tensor,  # (T,)
        visible: torch.Tensor,  # (T, L)
        n: int,
    ) -> torch.Tensor:
        attention = layer.self_attn
        tokens = h.shape[0]
        q = attention.q_proj(h).view(1, tokens, self.heads, self.head_dim).transpose(1, 2)
        k = attention.k_proj(h).view(1, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attention.v_proj(h).view(tokens, self.kv_heads, self.head_dim)
        q, k = apply_rotary_pos_emb(q, k, *rotary)  # (1, h, T, hd), (1, kv, T, hd)
        self.cache.write(2 * index, owner, positions, k[0].transpose(0, 1))
        self.cache.write(2 * index + 1, owner, positions, v)
        attended = visible.shape[1]
        # Each token's row of the cache (a copy of T x L positions): (T, kv, L, hd).
        keys = self.cache.view(2 * index, n, attended)[owner].transpose(1, 2)
        values = self.cache.view(2 * index + 1, n, attended)[owner].transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q[0].transpose(0, 1)[:, :, None],  # (T, h, 1, hd)
            keys,
            values,
            attn_mask=visible[:, None, None],
            scale=self.scaling,
            enable_gqa=self.kv_heads != self.heads,
        )  # (T, h, 1, hd)
        projected: torch.Tensor = attention.o_proj(out.reshape(tokens, -1))
        return projected

    def _canon(
        self,
        index: int,
        x: torch.Tensor,  # (T, d): the block's input
        owner: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """x_t + sum_j weight[j] * x_(t-j), reading the row's earlier inputs from its slot
        (positions before the first count as zero, as in `CanonMix`)."""
        weight = self.canons[index].weight  # (width, d)
        plane = 2 * len(self.layers) + index
        self.cache.write(plane, owner, positions, x)
        back = positions[:, None] - torch.arange(weight.shape[0])[None, :]  # (T, width)
        history = self.cache.gather(plane, owner[:, None].expand_as(back), back.clamp(min=0))
        history = torch.where((back >= 0)[:, :, None], history, history.new_zeros(()))
        out: torch.Tensor = x + (weight[None] * history).sum(1)  # history: (T, width, d)
        return out
