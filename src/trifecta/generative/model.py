"""The generative model: a masked-diffusion LM whose feed-forward blocks are a sparse MoE.

RND1 / LLaDA family: a bidirectional transformer reads a sequence in which some positions hold
`<mask>` and predicts the token of every masked position at once; decoding (`decoding.py`)
fills the masks over a few denoising steps. The body is the shipped cognitive tiers' Llama
layout (RMSNorm, rotary positions, SwiGLU, tied embeddings), so an autoregressive tier
converts into it weight for weight (`convert.py`): only the attention mask and the FFN differ.

Each FFN is a Mixture-of-Experts in DeepSeek-V3's style: sigmoid affinities, top-k selection
on affinity + bias, gates normalised over the selected experts. The bias steers *selection
only* (never the gate values): the training loop nudges it for load balance without an
auxiliary loss, and a capsule adds its own offsets and an expert mask at serving time
(`Routing`). Experts outside the mask are never called. A masked layer left with few active
experts runs them as one dense FFN (`dense_experts.py`) instead of dispatching tokens. A mask
may merge its dropped experts into its kept ones (`Routing.merge`, `selection.merge_plan`):
the kept experts' weights and router rows are then their groups' weighted averages, built
once per mask, and a token costs what it costs under the mask alone. A layer given an
`ExpertExecutor` routes as always and hands the routed tokens to it instead of computing the
experts itself (`ray_experts.PlacedMoE`: the experts on the nodes of a placement).

Shapes in comments: B batch, T positions, D d_model, H heads, E experts, K top-k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from trifecta.generative.dense_experts import StackedExperts

# A masked layer with at most top-k + DENSE_EXTRA_EXPERTS active experts runs them as one
# dense FFN at inference: with exactly top-k every token runs every one of them (the same
# multiply-adds as the dispatch, without its sort, calls and scatter-add); one more costs a
# zero-gated expert per token and still measured faster; two more (1.5x the multiply-adds at
# top-4) measured slower than the dispatch at every size (docs/generative.md).
DENSE_EXTRA_EXPERTS = 1


@dataclass
class DiffusionConfig:
    vocab_size: int = 46
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 192  # each expert's hidden width (the dense FFN's, which it was copied from)
    n_experts: int = 8
    top_k: int = 2
    block_size: int = 64  # positions the rotary table covers
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    canon_width: int = 4  # 0: no Canon layer
    # True: position i's logits predict token i + 1, as in the AR source (Dream's "shift",
    # Ye et al. 2025), so the converted model starts from what the AR head already predicts;
    # False: position i predicts itself (LLaDA; the first shipped model).
    shift: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


@dataclass
class Routing:
    """What a capsule changes in the router, and what the router reports back.

    `bias` (n_layers, E) is added to the model's own selection bias; `active` (n_layers, E)
    bool is the expert mask (None: every expert). `load` accumulates, per layer and expert, how many
    tokens were routed there (pads excluded) and `calls` how many expert calls ran."""

    bias: torch.Tensor | None = None
    active: torch.Tensor | None = None
    merge: torch.Tensor | None = None  # (n_layers, E, E) with `active`: `ExpertMask.merge`
    load: torch.Tensor | None = None  # (n_layers, E) float, filled by the forward pass
    row_load: torch.Tensor | None = None  # (B, n_layers, E) the same per request, when asked
    calls: int = 0
    expert_tokens: int = 0  # sum over calls of the tokens each call computed
    touched: set[tuple[int, int]] = field(default_factory=set)  # (layer, expert) pairs called


@dataclass(frozen=True)
class MaskedRouter:
    """One layer's router over a mask's active experts (`MoE._masked_router`)."""

    ids: torch.Tensor  # (A,) the active experts' ids, ascending
    id_list: list[int]  # the same as a list (the dispatch loop's)
    weight: torch.Tensor  # (A, D) their router rows
    selection_bias: torch.Tensor  # (A,) their selection biases
    stacked: StackedExperts | None  # their weights as one FFN, when few enough to run dense
    experts: list[Callable[[torch.Tensor], torch.Tensor]]  # (A,) what the dispatch calls


@dataclass(frozen=True)
class MergedExpert:
    """A kept expert after merging: SwiGLU over weights computed once per mask (views into
    the mask's stacked weights where it has them, so a merged mask holds one copy)."""

    gate: torch.Tensor  # (F, D)
    up: torch.Tensor  # (F, D)
    down: torch.Tensor  # (D, F)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.gate)) * F.linear(x, self.up), self.down)


class ExpertExecutor(Protocol):
    """Computes a MoE layer's routed tokens somewhere else (`ray_experts.PlacedMoE`)."""

    def compute(
        self,
        x: torch.Tensor,  # (n, D) the routed tokens (padding already left out)
        chosen: torch.Tensor,  # (n, K) expert ids
        gates: torch.Tensor,  # (n, K)
        masked: MaskedRouter | None,  # the mask's router: its merged experts, if it merges
        merge: torch.Tensor | None,  # (E, E) the layer's merge plan, if the mask merges
        routing: Routing | None,  # calls, expert tokens and experts touched are counted here
    ) -> torch.Tensor:  # (n, D) the gated sum of each token's experts
        ...


class Rotary(nn.Module):
    """Rotary embeddings as the Llama checkpoints apply them (rotate-half layout)."""

    inv_freq: torch.Tensor

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, T, hd) each


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


# A layer's cache for block decoding: keys and values (B, H, T, hd) and the layer's inputs
# (B, T, D), which the Canon layer of the block's first positions looks back at.
LayerCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Canon(nn.Module):
    """y_t = x_t + sum_{j < width} weight[j] * x_(t-j), per feature: a residual causal
    depthwise convolution (Allen-Zhu, "Physics of Language Models 4.1", 2025), the layer
    that took the edge model's look-ups from 32% to 99.5% (docs/edge.md). Padding and
    positions before the first count as zero, so a request reads the same alone or in a
    batch. Zero weights at the start: the identity, so conversion keeps the AR model."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(width, dim))

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, t, D), valid (B, t); history (B, width - 1, D): the inputs just before x
        (already zero where invalid), zeros when None."""
        B, t, D = x.shape
        if history is None:
            history = x.new_zeros((B, self.width - 1, D))
        seq = torch.cat((history, x * valid[..., None]), dim=1)  # (B, width - 1 + t, D)
        out = x
        for j in range(self.width):
            out = out + self.weight[j] * seq[:, self.width - 1 - j : self.width - 1 - j + t]
        return out


class Attention(nn.Module):
    def __init__(self, config: DiffusionConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = config.d_model, config.n_heads, config.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, t, D): every position, or only the block being decoded
        rotary: tuple[torch.Tensor, torch.Tensor],
        allowed: torch.Tensor,  # (B, 1, t or 1, T) bool: which keys each query may read
        cache: LayerCache | None = None,
        span: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, t, D = x.shape
        q, k, v = (
            p(x).view(B, t, self.n_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, t, hd) each
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None and span is not None:
            # Fast-dLLM's dual cache: keys/values outside the block come from the last full
            # pass (approximate: they do not see what the block has filled since).
            start, end = span
            k = torch.cat((cache[0][:, :, :start], k, cache[0][:, :, end:]), dim=2)
            v = torch.cat((cache[1][:, :, :start], v, cache[1][:, :, end:]), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, t, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, t, D)), (k, v)


class Expert(nn.Module):
    """SwiGLU, the Llama MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k experts per token; the selection bias is a buffer (never a gradient's business)."""

    selection_bias: torch.Tensor

    def __init__(self, config: DiffusionConfig, layer: int):
        super().__init__()
        self.layer, self.top_k = layer, config.top_k
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(config) for _ in range(config.n_experts))
        self.register_buffer("selection_bias", torch.zeros(config.n_experts))
        self.dense = True  # False: a masked layer always dispatches (tests, measurements)
        self.last_load: torch.Tensor | None = None  # (E,) tokens per expert, last forward
        self.executor: ExpertExecutor | None = None  # None: the experts run here
        # A mask's router, cached per mask (see `_masked_router`).
        self._masked: dict[tuple[object, ...], MaskedRouter] = {}

    def _masked_router(
        self, active: torch.Tensor, merge: torch.Tensor | None = None
    ) -> MaskedRouter:
        """The router restricted to a mask's active experts: their ids (A,), router rows
        (A, D) and selection biases (A,), and, when few enough to run dense, their weights
        stacked. A masked layer scores only the experts it may use, so a mask also saves
        router work. With `merge` (E, E) each active expert k is replaced by the experts
        merge[k] weights, its weights, router row and selection bias alike (built here once
        per mask, detached: a merge is a serving-time transform). Cached per mask while the
        weights stay unchanged (the key holds their storage and in-place version counters);
        never cached under autograd, where a slice would carry a graph from one step into
        the next."""
        weights = (self.router.weight, self.selection_bias, *self.experts.parameters())
        # A version counter alone is not an identity: a copied model's fresh tensors restart
        # their counts (and carry this cache along), so the storage address is keyed too.
        key = (
            active.numpy().tobytes(),
            None if merge is None else merge.numpy().tobytes(),
            self.dense,
            *((w.data_ptr(), w._version) for w in weights),
        )
        cached = self._masked.get(key)
        if cached is not None:
            return cached
        ids = active.nonzero().flatten()
        id_list = ids.tolist()
        stacked = None
        dense = self.dense and len(id_list) <= self.top_k + DENSE_EXTRA_EXPERTS
        router, selection_bias = self.router.weight[ids], self.selection_bias[ids]
        experts: list[Callable[[torch.Tensor], torch.Tensor]] = [self.experts[e] for e in id_list]
        chosen = [cast(Expert, self.experts[e]) for e in id_list]
        gate, up, down = (
            [e.gate_proj.weight for e in chosen],
            [e.up_proj.weight for e in chosen],
            [e.down_proj.weight for e in chosen],
        )
        if merge is not None:
            rows = merge[ids]  # (A, E) each active expert's merge weights
            every = [cast(Expert, e) for e in self.experts]
            with torch.no_grad():

                def combine(weights: list[torch.Tensor]) -> list[torch.Tensor]:
                    table = torch.stack(weights)  # (E, ...)
                    return list(torch.einsum("ae,e...->a...", rows, table))

                gate = combine([e.gate_proj.weight for e in every])
                up = combine([e.up_proj.weight for e in every])
                down = combine([e.down_proj.weight for e in every])
                router = rows @ self.router.weight
                selection_bias = rows @ self.selection_bias
        if dense:
            stacked = StackedExperts.of(gate, up, down)
            if merge is not None:  # the dispatch reads views of the stacked copy
                A, width = len(id_list), gate[0].shape[0]
                gate = list(stacked.w_in[: A * width].split(width))
                up = list(stacked.w_in[A * width :].split(width))
                down = list(stacked.w_out.split(width, dim=1))
        if merge is not None:
            experts = [MergedExpert(g, u, d) for g, u, d in zip(gate, up, down, strict=True)]
        masked = MaskedRouter(ids, id_list, router, selection_bias, stacked, experts)
        if not torch.is_grad_enabled():
            if len(self._masked) >= 64:  # a server sees a few masks; keep the cache bounded
                self._masked.clear()
            self._masked[key] = masked
        return masked

    def forward(
        self,
        x: torch.Tensor,
        counted: torch.Tensor,
        routing: Routing | None,
        executor: ExpertExecutor | None = None,
    ) -> torch.Tensor:
        """`executor` (default: the layer's own, `self.executor`) computes the routed tokens
        in place of the layer's experts; routing and its counts are the same either way."""
        executor = executor if executor is not None else self.executor
        shape = x.shape
        full = x.reshape(-1, shape[-1])  # (N, D)
        mask = counted.reshape(-1)  # (N,) False: padding, which nothing reads
        # At inference padding is not routed at all (its output stays zero: attention masks
        # it out and the Canon layer zeroes it); training computes as its recipes were run.
        inference = not torch.is_grad_enabled()
        skip = inference and not bool(mask.all())
        keep = mask.nonzero().flatten() if skip else None
        x = full if keep is None else full[keep]  # (n, D)
        E = len(self.experts)
        stacked = None
        merge: torch.Tensor | None = None
        masked: MaskedRouter | None = None
        if routing is not None and routing.active is not None:
            # Only the A active experts exist for this forward: router, top-k and dispatch
            # all run over A columns; `ids` maps a column back to its expert.
            merge = None if routing.merge is None else routing.merge[self.layer]
            masked = self._masked_router(routing.active[self.layer], merge)
            affinity = torch.sigmoid(F.linear(x, masked.weight))  # (N, A)
            bias = masked.selection_bias
            if routing.bias is not None:
                bias = bias + routing.bias[self.layer][masked.ids]
            ids: torch.Tensor | None = masked.ids
            experts = masked.id_list
            modules = masked.experts
            stacked = masked.stacked if inference else None  # the dense path
        else:
            affinity = torch.sigmoid(self.router(x))  # (N, E)
            bias = self.selection_bias
            if routing is not None and routing.bias is not None:
                bias = bias + routing.bias[self.layer]
            ids, experts = None, list(range(E))
            modules = list(self.experts)
        if stacked is not None and len(experts) == self.top_k:
            # Every token selects every active expert: no top-k to take.
            column = torch.arange(self.top_k).expand(x.shape[0], -1)  # (N, K)
        else:
            column = (affinity.detach() + bias).topk(self.top_k, dim=-1).indices  # (N, K)
        gates = affinity.gather(1, column)
        gates = gates / gates.sum(dim=-1, keepdim=True)  # (N, K), rows sum to 1
        chosen = column if ids is None else ids[column]  # (n, K) expert ids
        counted_chosen = chosen if keep is not None else chosen[mask]  # padding excluded
        load = torch.bincount(counted_chosen.reshape(-1), minlength=E).float()
        self.last_load = load
        if executor is not None:
            out = executor.compute(x, chosen, gates, masked, merge, routing)
        elif stacked is not None:
            dense_gates = torch.zeros_like(affinity).scatter_(1, column, gates)  # (n, A)
            out = stacked(x, dense_gates)
            if routing is not None:
                routing.calls += len(experts)
                routing.expert_tokens += len(experts) * x.shape[0]
                routing.touched.update((self.layer, e) for e in experts)
        else:
            out = self._dispatch(x, column, gates, experts, modules, routing)
        if keep is not None:
            out = torch.zeros_like(full).index_copy_(0, keep, out)
        if routing is not None and routing.load is not None:
            routing.load[self.layer] += load
        if routing is not None and routing.row_load is not None:
            B, N = routing.row_load.shape[0], full.shape[0]
            row = (torch.arange(N) // (N // B))[mask]  # (n,) the request of a counted token
            pairs = row[:, None] * E + counted_chosen  # (n, K)
            routing.row_load[:, self.layer] += torch.bincount(
                pairs.reshape(-1), minlength=B * E
            ).view(B, E)
        return out.reshape(shape)

    def _dispatch(
        self,
        x: torch.Tensor,  # (n, D)
        column: torch.Tensor,  # (n, K) columns of the routed experts
        gates: torch.Tensor,  # (n, K)
        experts: list[int],  # column -> expert id
        modules: list[Callable[[torch.Tensor], torch.Tensor]],  # column -> what computes it
        routing: Routing | None,
    ) -> torch.Tensor:
        """Grouped dispatch: one stable sort puts every (token, slot) pair of an expert in one
        contiguous run, so each expert with tokens is called once on a slice, and the outputs
        return in one scatter-add. An expert nobody chose (a masked one) is never called."""
        flat = column.reshape(-1)  # (n*K,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=len(experts)).tolist()
        token = order // self.top_k  # (n*K,) the token of each sorted pair
        xs = x[token]
        parts, start = [], 0
        for e, module, count in zip(experts, modules, counts, strict=True):
            if count == 0:
                continue
            parts.append(module(xs[start : start + count]))
            start += count
            if routing is not None:
                routing.calls += 1
                routing.expert_tokens += count
                routing.touched.add((self.layer, e))
        weighted = torch.cat(parts) * gates.reshape(-1)[order, None]  # (n*K, D)
        return torch.zeros_like(x).index_add_(0, token, weighted)


class Block(nn.Module):
    def __init__(self, config: DiffusionConfig, layer: int):
        super().__init__()
        self.canon = Canon(config.d_model, config.canon_width) if config.canon_width else None
        self.input_layernorm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.moe = MoE(config, layer)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        allowed: torch.Tensor,
        counted: torch.Tensor,
        routing: Routing | None,
        cache: LayerCache | None = None,
        span: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        inputs = x * counted[..., None]  # what a later block step's Canon looks back at
        if self.canon is not None:
            history = None
            if cache is not None and span is not None:
                w = self.canon.width - 1
                history = cache[2][:, max(0, span[0] - w) : span[0]]  # zero where invalid
                history = F.pad(history, (0, 0, w - history.shape[1], 0))  # (B, w, D)
            x = self.canon(x, counted, history)
        attended, (k, v) = self.self_attn(self.input_layernorm(x), rotary, allowed, cache, span)
        x = x + attended
        x = x + self.moe(self.post_attention_layernorm(x), counted, routing)
        return x, (k, v, inputs)


class DiffusionLM(nn.Module):
    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = Rotary(config)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.causal = False  # True only to check a conversion against its AR source

    def forward(
        self,
        idx: torch.Tensor,  # (B, T) token ids, `<mask>` where a token is to be predicted
        positions: torch.Tensor,  # (B, T) rotary positions (rows may be left-padded)
        valid: torch.Tensor,  # (B, T) bool: real tokens (False: padding nobody reads)
        routing: Routing | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """Logits (B, T, vocab) of every position, and each layer's keys and values."""
        B, T = idx.shape
        allowed = valid[:, None, None, :].expand(B, 1, T, T)  # (B, 1, T, T)
        if self.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
        start_routing(routing, self.config)
        x = self.embed_tokens(idx)  # (B, T, D)
        rotary = self.rotary(positions)
        caches = []
        for block in self.layers:
            x, kv = block(x, rotary, allowed, valid, routing)
            caches.append(kv)
        return self.logits(x), caches

    def forward_span(
        self,
        idx: torch.Tensor,  # (B, t) the block's tokens
        positions: torch.Tensor,  # (B, t)
        valid: torch.Tensor,  # (B, T) bool over the whole sequence
        span: tuple[int, int],
        caches: list[LayerCache],
        routing: Routing | None = None,
    ) -> torch.Tensor:
        """Logits (B, t, vocab) of the block `span` only, reading every other position's keys
        and values from `caches` (computed by the last full `forward`)."""
        start_routing(routing, self.config)
        x = self.embed_tokens(idx)
        rotary = self.rotary(positions)
        allowed = valid[:, None, None, :]  # (B, 1, 1, T)
        counted = torch.ones(idx.shape, dtype=torch.bool)
        for block, cache in zip(self.layers, caches, strict=True):
            x, _ = block(x, rotary, allowed, counted, routing, cache, span)
        return self.logits(x)

    def blocks(self) -> list[Block]:
        return [cast(Block, b) for b in self.layers]

    @torch.no_grad()
    def prepare_mask(self, active: torch.Tensor, merge: torch.Tensor | None = None) -> int:
        """Build and cache every layer's router (and merged, stacked weights) for a mask
        before its first request; the bytes the mask's cached weights hold, beyond the
        model's own (a merge's weights; a dense layer's stacked copy)."""
        held = 0
        for block in self.blocks():
            layer = block.moe.layer
            masked = block.moe._masked_router(
                active[layer], None if merge is None else merge[layer]
            )
            tensors = [masked.weight, masked.selection_bias]
            if masked.stacked is not None:
                tensors += [masked.stacked.w_in, masked.stacked.w_out]
            held += sum(t.numel() * t.element_size() for t in tensors)
        return held

    def router_weights(self) -> torch.Tensor:
        """(n_layers, E, D) every layer's router rows (what a merge plan groups by)."""
        return torch.stack([b.moe.router.weight.detach() for b in self.blocks()])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied output head

    def balance_step(self, rate: float) -> None:
        """DeepSeek-V3's auxiliary-loss-free balancing after a training step: each layer's
        overloaded experts (load above the mean) get `rate` less selection bias, underloaded
        ones `rate` more."""
        for block in self.blocks():
            load = block.moe.last_load
            if load is not None:
                block.moe.selection_bias -= rate * torch.sign(load - load.mean())

    def parameter_count(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        expert = sum(p.numel() for b in self.blocks() for p in b.moe.experts[0].parameters())
        n = self.config.n_experts
        return {"total": total, "active": total - expert * (n - self.config.top_k)}


def start_routing(routing: Routing | None, config: DiffusionConfig) -> None:
    if routing is not None and routing.load is None:
        routing.load = torch.zeros(config.n_layers, config.n_experts)
