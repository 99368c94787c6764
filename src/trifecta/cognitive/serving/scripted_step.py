"""The continuous-batching step's layers as one TorchScript call, so a step holds the GIL once.

Why: torch releases the GIL around every operation it runs from Python and takes it back
after. A tier's step runs ~220 small operations; while the loop's request threads run Python,
each of those take-backs waits for the GIL, so the replica's thread spent more of a step
waiting than computing (py-spy `--native --idle` of `trifecta run`, 16 workers: the large
tier's thread 15% on a core, ~35% of its samples in `take_gil` after a torch call; a lone
step of the large tier 1.9 ms, 2.9 ms beside four threads of Python at 10% each). A scripted
module runs its whole graph in C++ with the GIL released once (`torch.jit`'s call from
Python drops it for the run), so the step neither waits for the request threads nor makes
them wait, and the second core can run it while they run Python.

TorchScript is deprecated in favour of `torch.compile` / `torch.export`; neither has this
property for an eager caller (a compiled graph's wrapper is Python, and `torch.export`'s
packaged form needs a C++ toolchain at run time and static shapes), so it is used here and
`SlotForward` keeps its eager step for what this module does not cover (non-SiLU MLPs) and
as the reference `check_agrees` tests this one against.

Shapes as in `slot_forward`: T tokens fed, n rows, L attended width, d hidden size.
"""

# No `from __future__ import annotations`: TorchScript reads the class annotations as types.
import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


class ScriptedLayers(torch.nn.Module):
    """Embedding, every decoder layer (Canon mix, attention over the slot cache, SiLU MLP), the
    final norm and the head: the eager `SlotForward.step`'s arithmetic, except where a step
    feeds prompts: those rows attend as a padded block over their own slots (the eager step
    gathers every token's row of the cache), and the last layer runs attention and MLP for
    each row's last token only (what the logits read; every token's keys and values are
    still written). The cache planes are the `SlotCache`'s own tensors (written in place)."""

    # Declared here: TorchScript cannot type an empty list (no Canon layers) from `__init__`.
    canons: list[Tensor]
    eps: list[float]
    qkv_bias: list[Tensor | None]
    out_bias: list[Tensor | None]
    gate_up_bias: list[Tensor | None]
    down_bias: list[Tensor | None]

    def __init__(self, forward: Any) -> None:  # a `SlotForward` (not imported: no cycle)
        super().__init__()
        blocks = forward.blocks
        self.embedding: Tensor = forward.embedding.detach()
        self.cos: Tensor = forward.cos
        self.signed_sin: Tensor = forward.signed_sin
        self.final_norm: Tensor = forward.final_norm.detach()
        self.final_eps: float = forward.final_eps
        self.head: Tensor = forward.head
        self.attention_norms = [b.attention_norm.detach() for b in blocks]
        self.qkv = [b.qkv for b in blocks]
        self.qkv_bias = [_detached(b.qkv_bias) for b in blocks]
        self.out = [b.out for b in blocks]
        self.out_bias = [_detached(b.out_bias) for b in blocks]
        self.mlp_norms = [b.mlp_norm.detach() for b in blocks]
        self.gate_up = [b.gate_up for b in blocks]
        self.gate_up_bias = [_detached(b.gate_up_bias) for b in blocks]
        self.down = [b.down for b in blocks]
        self.down_bias = [_detached(b.down_bias) for b in blocks]
        self.eps = [b.eps for b in blocks]
        self.canons = [c.weight.detach() for c in forward.canons]
        self.planes = forward.cache.planes
        self.heads: int = forward.heads
        self.kv: int = forward.kv_heads
        self.head_dim: int = forward.head_dim
        self.scaling: float = float(forward.scaling)
        self.gqa: bool = forward.kv_heads != forward.heads

    def forward(
        self,
        ids: Tensor,  # (T,) the fed tokens, packed row after row
        starts: Tensor,  # (n,) the positions each row's slot already holds
        counts: Tensor | None,  # (n,) tokens fed to each row; None: one each (decoding)
        attended: int,  # L: the longest row after the step
        single: int = 0,  # m: the leading rows fed one token each (with counts)
        widest: int = 1,  # P: the most tokens fed to one of the other rows (with counts)
    ) -> Tensor:  # (n, vocab) the logits after each row's last fed token
        n = starts.shape[0]
        decoding = counts is None
        ends: Tensor | None = None  # (n,) one past each row's last token in the pack
        # The rows after the first m attend as a padded block of queries (n - m, P): each
        # over its own slot, unlike a gather of every token's row of the cache (a copy of
        # T x L positions a layer and T one-query attentions: a 40-token prompt cost the
        # medium tier 4.5 decoding steps).
        padded_rows = torch.arange(0)  # (T - m,) each of those tokens' row among them ...
        padded_columns = torch.arange(0)  # ... and its place in that row's chunk
        padded_mask = torch.zeros(0, 1, 1, 1, dtype=self.embedding.dtype)  # (n-m, 1, P, L)
        if counts is None:  # token t is row t's, at the row's next column
            owner = torch.arange(n)
            positions = starts
        else:
            owner = torch.repeat_interleave(torch.arange(n), counts)  # (T,) each token's row
            ends = torch.cumsum(counts, 0)
            first = ends - counts  # (n,) each row's first token in the pack
            offsets = torch.arange(ids.shape[0]) - first[owner]  # (T,) place in its chunk
            positions = starts[owner] + offsets
            padded_rows = owner[single:] - single
            padded_columns = offsets[single:]
            padded_positions = starts[single:, None] + torch.arange(widest)[None, :]  # (n-m, P)
            columns = torch.arange(attended)[None, None, :]
            padded_mask = _additive(columns <= padded_positions[:, :, None], self.embedding.dtype)[
                :, None
            ]
        visible = torch.arange(attended)[None, :] <= positions[:, None]  # (T, L)
        back_rows: Tensor | None = None  # (T, width) the Canon look-back's rows ...
        back_columns: Tensor | None = None  # ... columns (clamped at 0) ...
        # (T, width, 1) ... and which are before a row's first position (None: none are,
        # as in a step of rows past their first `width` tokens: no masking a layer)
        back_invalid: Tensor | None = None
        if len(self.canons) > 0:
            back = positions[:, None] - torch.arange(self.canons[0].shape[0])[None, :]
            back_rows = owner[:, None].expand_as(back)
            back_columns = back.clamp(min=0)
            if bool((back < 0).any()):
                back_invalid = (back < 0)[:, :, None]
        x = F.embedding(ids, self.embedding)  # (T, d)
        cos = self.cos[positions]  # (T, 1, hd)
        signed_sin = self.signed_sin[positions]
        d = x.shape[-1]
        tokens = x.shape[0]
        # (T, 1, 1, L), additive: made once a step, not converted from booleans in each
        # layer's attention (three operations a layer)
        mask = _additive(visible, self.embedding.dtype)[:, None, None]
        layers = len(self.qkv)
        for number in range(layers):
            if len(self.canons) > 0:
                assert back_rows is not None and back_columns is not None
                plane = self.planes[2 * layers + number]
                plane.index_put_([owner, positions], x)
                history = plane[back_rows, back_columns]  # (T, width, d)
                if back_invalid is not None:
                    history = history.masked_fill(back_invalid, 0.0)
                x = x + (self.canons[number][None] * history).sum(1)
            h = torch.rms_norm(x, [d], self.attention_norms[number], self.eps[number])
            qkv = _product(h, self.qkv[number], self.qkv_bias[number])
            qkv = qkv.view(tokens, self.heads + 2 * self.kv, self.head_dim)
            qk = qkv[:, : self.heads + self.kv]
            v = qkv[:, self.heads + self.kv :]
            qk = torch.addcmul(qk * cos, qk.roll(self.head_dim // 2, -1), signed_sin)
            q = qk[:, : self.heads]
            k = qk[:, self.heads :]
            key_plane = self.planes[2 * number]
            value_plane = self.planes[2 * number + 1]
            key_plane.index_put_([owner, positions], k)
            value_plane.index_put_([owner, positions], v)
            keys = key_plane[:n, :attended].transpose(1, 2)  # (n, kv, L, hd)
            values = value_plane[:n, :attended].transpose(1, 2)
            if decoding:
                out = self._attend(q, keys, values, mask)
            elif ends is not None and number == layers - 1:
                # Past its keys and values, the last layer feeds only the logits: each row's
                # last token alone, as a decoding row (the prompt's other tokens skip its
                # attention and MLP).
                lasts = ends - 1
                x, tokens = x[lasts], n
                out = self._attend(q[lasts], keys, values, mask[lasts])
            else:
                block = q.new_zeros(n - single, widest, self.heads, self.head_dim)
                block[padded_rows, padded_columns] = q[single:]
                rest = F.scaled_dot_product_attention(
                    block.transpose(1, 2),  # (n - m, h, P, hd)
                    keys[single:],
                    values[single:],
                    attn_mask=padded_mask,
                    scale=self.scaling,
                    enable_gqa=self.gqa,
                ).transpose(1, 2)  # (n - m, P, h, hd)
                out = rest[padded_rows, padded_columns]
                if single > 0:
                    head = self._attend(q[:single], keys[:single], values[:single], mask[:single])
                    out = torch.cat([head, out])
            x = x + _product(out.reshape(tokens, -1), self.out[number], self.out_bias[number])
            h = torch.rms_norm(x, [d], self.mlp_norms[number], self.eps[number])
            gate_up = _product(h, self.gate_up[number], self.gate_up_bias[number])
            gate, up = gate_up.chunk(2, -1)
            x = x + _product(F.silu(gate) * up, self.down[number], self.down_bias[number])
        if ends is not None and layers == 0:
            x = x[ends - 1]
        # (n, d): each row's last fed token (the last layer kept only those)
        normed = torch.rms_norm(x, [d], self.final_norm, self.final_eps)
        return torch.mm(normed, self.head)

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """Token t's query over row t's slot: q (t, h, hd), keys and values (t, kv, L, hd),
        mask (t, 1, 1, L); (t, h, hd)."""
        return F.scaled_dot_product_attention(
            q[:, :, None], keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=self.gqa
        )[:, :, 0]


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask as the additive one attention applies (0 or -inf)."""
    zeros = torch.zeros(allowed.shape, dtype=dtype)
    return zeros.masked_fill_(allowed.logical_not(), float("-inf"))


def _product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return torch.mm(x, weight)
    return torch.addmm(bias, x, weight)


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


def script(target: Any) -> Any:
    """`torch.jit.script(target)`, its deprecation warning silenced (the module docstring says
    why this path is kept); `target` itself, run eagerly, where this torch cannot script it
    (a build without TorchScript's compiler: same arithmetic, the GIL taken per operation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.script(target)
        except (RuntimeError, AttributeError, NotImplementedError) as error:
            log.warning("serving: TorchScript unavailable, eager step (%s)", str(error)[:200])
            return target


def scripted_layers(forward: Any) -> torch.nn.Module:
    """The `SlotForward`'s layers as a TorchScript module (or eager, as `script` says)."""
    module: torch.nn.Module = script(ScriptedLayers(forward))
    return module
