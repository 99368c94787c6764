"""The edge model in PyTorch: a small pre-norm transformer built on BitLinear.

One block, BitNet b1.58 style (LLaMA-like, no biases, ReLU^2 feed-forward and a sub-norm
before each output projection, as in BitNet b1.58 2B4T), plus a Canon layer before the
attention:

    h = x + out(subnorm_attn(attention(qkv(norm_attn(canon(x))))))
    y = h + down(subnorm_ffn(relu(up(norm_ffn(h)))^2))

The Canon layer (Allen-Zhu, "Physics of Language Models: Part 4.1, Architecture Design and the
Magic of Canon Layers", NeurIPS 2025, arXiv:2512.17351) is a residual causal depthwise
convolution over the last `canon_width` tokens. A look-up needs each value's digits to know
their sensor's name, three tokens back; attention alone learnt that so slowly that the edge
model plateaued at 20-30% held-out look-ups after 6,000 look-up steps, and with the Canon
layer it reaches 87% after 500 (docs/edge.md, "Why a Canon layer").

Token and learned position embeddings, the norms, the Canon weights and the attention
arithmetic are float32; the output head is tied to the token embedding. This module is the
training model and the reference the torch-free runtime is checked against
(`EdgeTransformer.from_artifact`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.attention import rotary_tables
from trifecta.edge.bitlinear import BitLinear
from trifecta.edge.config import EdgeModelConfig


@dataclass
class KVCache:
    """One block's keys and values so far (batch, heads, positions, head_dim), and its inputs
    so far (batch, positions, d_model) for the Canon layer."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


Rotary = tuple[torch.Tensor, torch.Tensor]  # cos, sin rows of the positions in use


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x (batch, heads, positions, head_dim), "rotate half" arrangement."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Canon(nn.Module):
    """y_t = x_t + sum_j weight[j] * x_(t-j) over j < width (per feature; earlier than the
    first position counts as zero). Zero weights at the start: the identity. Summed in the order
    of j, as the runtime does, so both round the same."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(width, dim))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        length = x.shape[1]
        history = x
        if cache is not None:
            if cache.inputs is not None:
                history = torch.cat([cache.inputs, x], dim=1)
            cache.inputs = history
        padded = F.pad(history, (0, 0, self.width - 1, 0))[:, -(length + self.width - 1) :]
        out = x
        for j in range(self.width):
            out = out + self.weight[j] * padded[:, self.width - 1 - j : self.width - 1 - j + length]
        return out


class Block(nn.Module):
    def __init__(self, config: EdgeModelConfig):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.canon = Canon(d, config.canon_width) if config.canon_width else None
        self.norm_attn = RMSNorm(d, config.norm_eps)
        self.qkv = BitLinear(d, 3 * d)
        self.subnorm_attn = RMSNorm(d, config.norm_eps)
        self.out = BitLinear(d, d)
        self.norm_ffn = RMSNorm(d, config.norm_eps)
        self.up = BitLinear(d, config.d_ff)
        self.subnorm_ffn = RMSNorm(config.d_ff, config.norm_eps)
        self.down = BitLinear(config.d_ff, d)

    def attention(
        self, x: torch.Tensor, cache: KVCache | None, rotary: Rotary | None
    ) -> torch.Tensor:
        batch, length, d = x.shape
        if self.canon is not None:
            x = self.canon(x, cache)
        q, k, v = self.qkv(self.norm_attn(x)).split(d, dim=-1)
        shape = (batch, length, self.n_heads, d // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:
            if cache.keys is not None and cache.values is not None:
                k, v = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
            cache.keys, cache.values = k, v
        # One new token attends to the whole cache; a prefill is causal from position 0.
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1)
        return mixed.transpose(1, 2).reshape(batch, length, d)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, rotary: Rotary | None = None
    ) -> torch.Tensor:
        x = x + self.out(self.subnorm_attn(self.attention(x, cache, rotary)))
        hidden = F.relu(self.up(self.norm_ffn(x))).square()
        return x + self.down(self.subnorm_ffn(hidden))


class EdgeTransformer(nn.Module):
    rotary_cos: torch.Tensor
    rotary_sin: torch.Tensor

    def __init__(self, config: EdgeModelConfig, init_std: float = 0.02):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.d_model)
        cos, sin = rotary_tables(config.head_dim, config.block_size)
        self.register_buffer("rotary_cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("rotary_sin", torch.from_numpy(sin), persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_out = RMSNorm(config.d_model, config.norm_eps)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=init_std)
        # (Canon weights start at zero: each Canon layer starts as the identity.)
        # Scaled init of the residual projections (GPT-2).
        for block in self.blocks:
            assert isinstance(block, Block)
            for proj in (block.out, block.down):
                nn.init.normal_(proj.weight, std=init_std / math.sqrt(2 * config.n_layers))

    def forward(
        self, ids: torch.Tensor, caches: list[KVCache] | None = None, start: int = 0
    ) -> torch.Tensor:
        """Token ids (batch, length) at positions start.. -> logits (batch, length, vocab).
        With `caches` (one per block, extended in place) only the new tokens are given:
        the whole prompt first (start 0), then one token per step."""
        length = ids.shape[1]
        if start + length > self.config.block_size:
            raise ValueError(f"position {start + length} exceeds block {self.config.block_size}")
        x = self.tok_emb(ids)
        rotary: Rotary | None = None
        if self.config.positions == "learned":
            x = x + self.pos_emb(torch.arange(start, start + length, device=ids.device))
        else:
            rotary = (
                self.rotary_cos[start : start + length],
                self.rotary_sin[start : start + length],
            )
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None, rotary)
        return F.linear(self.norm_out(x), self.tok_emb.weight)

    def bitlinears(self) -> dict[str, BitLinear]:
        """Every ternary projection by its artifact name (`blocks.0.qkv`, ...)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, BitLinear)}

    def float_tensors(self) -> dict[str, torch.Tensor]:
        """Every float parameter kept in full precision (embeddings, norm gains, Canon)."""
        ternary = {f"{name}.weight" for name in self.bitlinears()}
        return {n: p.detach() for n, p in self.named_parameters() if n not in ternary}

    @torch.no_grad()
    def greedy_ids(self, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
        """Greedy continuation of one prompt, recomputing the whole sequence each step (the
        plain reference; the runtime keeps a KV cache)."""
        ids = list(prompt_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            if len(ids) >= self.config.block_size:
                break
            logits = self(torch.tensor([ids]))[0, -1]
            token = int(logits.argmax())
            out.append(token)
            if token == eos_id:
                break
            ids.append(token)
        return out

    @classmethod
    def from_artifact(cls, artifact: EdgeArtifact) -> EdgeTransformer:
        """The reference model serving exactly an artifact's weights (eval mode)."""
        model = cls(artifact.config)
        with torch.no_grad():
            for name, tensor in model.float_tensors().items():
                tensor.copy_(torch.from_numpy(artifact.floats[name]))
            for name, layer in model.bitlinears().items():
                matrix = artifact.ternary[name]
                layer.freeze(torch.from_numpy(matrix.values().astype("float32")), matrix.scale)
        return model.eval()
