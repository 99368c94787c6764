"""One forward pass for a whole continuous-batching step: every running request's next token and
every newcomer's prompt together, over the replica's preallocated slot cache.

This is the iteration-level step of Orca and vLLM (a step mixes prefills and decodes, "chunked
prefill" in vLLM's words) written for Llama-family models on a CPU. It runs the model's own
embedding, rotary embedding and weights (norms, projections, MLP, head, Canon) and writes
only the glue `transformers` has no form for: keys written in place at each row's own column
and attention masked per row, which its caches (one shared length per batch, or a left-padded
`DynamicCache` that is re-stacked whenever a row joins or leaves) do not offer. vLLM likewise
ships its own model code around its KV layout rather than running Hugging Face's forward.
Because that glue re-implements what the model's `forward` does, `check_agrees` runs both on
one prompt when a replica starts and refuses a model whose logits differ.

The tiers are small (hidden size 64-160), so a step's cost is the number of operations torch
dispatches more than their arithmetic. The step therefore reads the weights once when the
replica starts (`_Block`: queries, keys and values as one product, the MLP's gate and up as
one, each stored as a contiguous (in, out) matrix, which MKL multiplies in half the time of
`F.linear`'s (out, in) at these shapes), turns the queries and keys together, works out the
per-step index tensors (Canon look-back) once for every layer, and lets a step of decoding
rows attend to their slots without gathering them (token t is row t's). The large tier's
8-row decoding step dispatches 222 operations instead of 388 (`torch.profiler`'s top-level
count) and takes 1.5x less CPU (3.1 ms instead of 4.7; the small tier's 1.4x, 0.89 instead
of 1.22; one thread, best of 5 rounds at load about 10). A replica serves the weights it
loaded (nothing in serving writes them; a new checkpoint starts a new replica), so the
stacked copies cannot go stale.

Shapes: n rows in the step, T tokens fed in all (a decoding row feeds 1, a newcomer its
prompt), L the attended width (the longest row after the step), d the hidden size, h / kv
query / key-value heads, hd the head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from trifecta.cognitive.serving.scripted_step import scripted_layers
from trifecta.cognitive.serving.slot_cache import SlotCache
from trifecta.core.errors import InvalidInput


@dataclass(frozen=True)
class StepRows:
    """What each of the first n slots is fed this step: `chunks[r]` tokens from column
    `starts[r]` (the positions the slot already holds)."""

    starts: list[int]
    chunks: list[list[int]]


@dataclass(frozen=True)
class _Block:
    """One decoder layer's weights as the step uses them (read once: module docstring)."""

    attention_norm: torch.Tensor  # (d,)
    qkv: torch.Tensor  # (d, h*hd + 2*kv*hd): query, key and value projections stacked
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (h*hd, d)
    out_bias: torch.Tensor | None
    mlp_norm: torch.Tensor  # (d,)
    gate_up: torch.Tensor  # (d, 2*i): the MLP's gate and up projections stacked
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # (i, d)
    down_bias: torch.Tensor | None
    eps: float

    @classmethod
    def of(cls, layer: Any) -> _Block:
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            attention_norm=layer.input_layernorm.weight,
            qkv=_transposed(attention.q_proj, attention.k_proj, attention.v_proj),
            qkv_bias=_stacked_bias([attention.q_proj, attention.k_proj, attention.v_proj]),
            out=_transposed(attention.o_proj),
            out_bias=attention.o_proj.bias,
            mlp_norm=layer.post_attention_layernorm.weight,
            gate_up=_transposed(mlp.gate_proj, mlp.up_proj),
            gate_up_bias=_stacked_bias([mlp.gate_proj, mlp.up_proj]),
            down=_transposed(mlp.down_proj),
            down_bias=mlp.down_proj.bias,
            eps=float(layer.input_layernorm.variance_epsilon),
        )


def _transposed(*projections: Any) -> torch.Tensor:
    """The projections' weights stacked, as one contiguous (in, out) matrix: `x @ w` on it
    takes half the time of `F.linear(x, weight)` at a decoding step's shapes (5 vs 9 us for
    one row, 12 vs 25 us for 8, 160 -> 480, one thread; measured)."""
    return torch.cat([p.weight for p in projections]).T.contiguous()


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)


def _stacked_bias(projections: list[Any]) -> torch.Tensor | None:
    biases = [p.bias for p in projections]
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [
            b if b is not None else p.weight.new_zeros(p.weight.shape[0])
            for p, b in zip(projections, biases, strict=True)
        ]
    )


@dataclass(frozen=True)
class _StepIndex:
    """The index tensors a step shares across its layers."""

    owner: torch.Tensor  # (T,) each token's row
    positions: torch.Tensor  # (T,)
    visible: torch.Tensor  # (T, L): the columns each token attends to
    n: int  # rows in the step
    decoding: bool  # every row fed one token: token t is row t's, its rows need no gather
    back_rows: torch.Tensor | None  # (T, width): the Canon look-back's rows ...
    back_columns: torch.Tensor | None  # ... and columns (clamped at 0) ...
    back_valid: torch.Tensor | None  # (T, width, 1): ... and which are real positions


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
        self.blocks = [_Block.of(layer) for layer in self.layers]
        self.final_norm = model.model.norm.weight
        self.final_eps = float(model.model.norm.variance_epsilon)
        self.head = model.lm_head.weight.T.contiguous()  # (d, vocab)
        self.embedding = model.model.embed_tokens.weight  # (vocab, d)
        # The rotary cos and signed sin of every position, from the model's own rotary
        # embedding (a function of the position alone), so a step indexes them instead of
        # running that module and the sign flip (2% of the loop's busy CPU, py-spy).
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(
                self.embedding, torch.arange(self.context_length)[None]
            )
        self.cos, self.signed_sin = self._rotary(cos[0], sin[0])  # (context, 1, hd) each
        act = self.layers[0].mlp.act_fn
        self.act: Callable[[torch.Tensor], torch.Tensor] = (
            F.silu if config.hidden_act == "silu" else act
        )
        shapes: list[tuple[int, ...]] = []
        for _ in self.layers:
            shapes += [(self.kv_heads, self.head_dim)] * 2  # keys, values
        shapes += [(int(config.hidden_size),)] * len(self.canons)  # each Canon layer's inputs
        self.cache = SlotCache(slots, self.context_length, shapes)
        # The step as one TorchScript call (the GIL held once a step: `scripted_step`); the
        # eager step below stays for other activations and as its reference in the tests.
        self.scripted = scripted_layers(self) if config.hidden_act == "silu" else None

    def step(self, rows: StepRows, *, eager: bool = False) -> torch.Tensor:
        """Feed every row its chunk; the logits after each row's last fed token [n, vocab]
        (`eager`: through torch's eager operations even where the scripted step applies).

        The fed tokens are packed into one sequence of T tokens (no padding: a decoding row
        costs one token however long a newcomer's prompt is); only attention is per row, each
        token over its own row's columns up to its position."""
        n = len(rows.chunks)
        decoding = all(len(chunk) == 1 for chunk in rows.chunks)
        attended = max(s + len(c) for s, c in zip(rows.starts, rows.chunks, strict=True))  # L
        ids = torch.tensor([token for chunk in rows.chunks for token in chunk])  # (T,)
        if self.scripted is not None and not eager:  # the index arithmetic below, scripted
            if decoding:
                out: torch.Tensor = self.scripted(ids, torch.tensor(rows.starts), None, attended)
                return out
            lengths = [len(chunk) for chunk in rows.chunks]
            single = next((r for r, length in enumerate(lengths) if length != 1), n)
            counts = torch.tensor(lengths)
            widest = max(lengths[single:])
            out = self.scripted(ids, torch.tensor(rows.starts), counts, attended, single, widest)
            return out
        ends: torch.Tensor | None = None  # (n,) one past each row's last token in the pack
        if decoding:  # token t is row t's, at the row's next column: no index arithmetic
            owner = torch.arange(n)
            positions = torch.tensor(rows.starts)
        else:
            counts = torch.tensor([len(chunk) for chunk in rows.chunks])
            owner = torch.repeat_interleave(torch.arange(n), counts)  # (T,) each token's row
            ends = torch.cumsum(counts, 0)
            first = ends - counts  # (n,) each row's first token in the pack
            positions = torch.tensor(rows.starts)[owner] + torch.arange(len(ids)) - first[owner]
        index = self._index(owner, positions, attended, n, decoding)
        x = F.embedding(ids, self.embedding)  # (T, d)
        rotary = self.cos[positions], self.signed_sin[positions]  # (T, 1, hd) each
        for number, block in enumerate(self.blocks):
            if self.canons:
                x = self._canon(number, x, index)
            h = F.rms_norm(x, x.shape[-1:], block.attention_norm, block.eps)
            x = x + self._attend(number, block, h, rotary, index)
            h = F.rms_norm(x, x.shape[-1:], block.mlp_norm, block.eps)
            gate, up = _product(h, block.gate_up, block.gate_up_bias).chunk(2, dim=-1)
            x = x + _product(self.act(gate) * up, block.down, block.down_bias)
        last = x if ends is None else x[ends - 1]  # (n, d): each row's last fed token
        normed = F.rms_norm(last, last.shape[-1:], self.final_norm, self.final_eps)
        return torch.mm(normed, self.head)

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

    def _index(
        self, owner: torch.Tensor, positions: torch.Tensor, attended: int, n: int, decoding: bool
    ) -> _StepIndex:
        visible = torch.arange(attended)[None, :] <= positions[:, None]  # (T, L)
        if not self.canons:
            return _StepIndex(owner, positions, visible, n, decoding, None, None, None)
        width = self.canons[0].weight.shape[0]
        back = positions[:, None] - torch.arange(width)[None, :]  # (T, width)
        return _StepIndex(
            owner,
            positions,
            visible,
            n,
            decoding,
            owner[:, None].expand_as(back),
            back.clamp(min=0),
            (back >= 0)[:, :, None],
        )

    def _rotary(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) [T, 1, hd], so that turning x is x*cos + roll(x, hd/2)*signed:
        `rotate_half(x) * sin` of Llama's rotary embedding in one roll."""
        half = cos.shape[-1] // 2
        signs = torch.cat([-torch.ones(half), torch.ones(cos.shape[-1] - half)])
        return cos[:, None], (sin * signs)[:, None]

    def _attend(
        self,
        number: int,
        block: _Block,
        h: torch.Tensor,  # (T, d), normed
        rotary: tuple[torch.Tensor, torch.Tensor],  # (T, 1, hd) each
        index: _StepIndex,
    ) -> torch.Tensor:
        tokens = h.shape[0]
        heads, kv, hd = self.heads, self.kv_heads, self.head_dim
        qkv = _product(h, block.qkv, block.qkv_bias).view(tokens, heads + 2 * kv, hd)
        qk, v = qkv[:, : heads + kv], qkv[:, heads + kv :]  # (T, h+kv, hd), (T, kv, hd)
        cos, signed_sin = rotary
        qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), signed_sin)  # queries, keys turned
        q, k = qk[:, :heads], qk[:, heads:]
        self.cache.write(2 * number, index.owner, index.positions, k)
        self.cache.write(2 * number + 1, index.owner, index.positions, v)
        attended = index.visible.shape[1]
        keys = self.cache.view(2 * number, index.n, attended)  # (n, L, kv, hd)
        values = self.cache.view(2 * number + 1, index.n, attended)
        if not index.decoding:  # each token's row of the cache (a copy of T x L positions)
            keys, values = keys[index.owner], values[index.owner]
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)  # (T, kv, L, hd)
        out = F.scaled_dot_product_attention(
            q[:, :, None],  # (T, h, 1, hd)
            keys,
            values,
            attn_mask=index.visible[:, None, None],
            scale=self.scaling,
            enable_gqa=kv != heads,
        )  # (T, h, 1, hd)
        return _product(out.reshape(tokens, -1), block.out, block.out_bias)

    def _canon(self, number: int, x: torch.Tensor, index: _StepIndex) -> torch.Tensor:
        """x_t + sum_j weight[j] * x_(t-j), reading the row's earlier inputs from its slot
        (positions before the first count as zero, as in `CanonMix`). x: (T, d)."""
        assert index.back_rows is not None and index.back_columns is not None
        assert index.back_valid is not None
        weight = self.canons[number].weight  # (width, d)
        plane = 2 * len(self.layers) + number
        self.cache.write(plane, index.owner, index.positions, x)
        history = self.cache.gather(plane, index.back_rows, index.back_columns)  # (T, width, d)
        history = torch.where(index.back_valid, history, history.new_zeros(()))
        out: torch.Tensor = x + (weight[None] * history).sum(1)
        return out
