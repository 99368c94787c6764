"""The torch-free edge runtime: the whole edge model in numpy + numba.

It loads a packed artifact, prepares each ternary matrix once for the kernel chosen by CPU
feature detection, and decodes with a KV cache. Its BitLinear arithmetic is the reference's:
the same int8 activation quantisation, the exact int32 products from the kernels, and the
same float32 scaling, so that its tokens equal the PyTorch model's (`model.EdgeTransformer`).
It satisfies `core.protocols.LanguageModel`. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import Generation, TokenAlternative
from trifecta.core.tokenizer import CharTokenizer
from trifecta.edge.artifact import EdgeArtifact, TernaryMatrix
from trifecta.edge.attention import KVBatch, attend_prefill, attend_step, rotary_tables, rotate
from trifecta.edge.canon import canon_norm_quantize
from trifecta.edge.config import EdgeModelConfig
from trifecta.edge.kernels import PreparedTernary, select_kernel
from trifecta.edge.kernels.activations import norm_quantize, quantize
from trifecta.edge.kernels.cpu import pin_threads
from trifecta.edge.sampling import NextToken, choose_token

Array = NDArray[np.float32]


@dataclass
class TernaryLayer:
    prepared: PreparedTernary
    scale: np.float32

    def __call__(self, x: Array, threads: int) -> Array:
        """BitLinear: int8 activations x ternary weights, rescaled exactly as the reference."""
        return self.quantized(*quantize(np.ascontiguousarray(x, np.float32)), threads)

    def after_norm(self, x: Array, norm_weight: Array, eps: float, threads: int) -> Array:
        """BitLinear of RMSNorm(x) * norm_weight (normalised and quantised in one pass)."""
        return self.quantized(*norm_quantize(np.ascontiguousarray(x), norm_weight, eps), threads)

    def quantized(self, x_q: NDArray[np.int8], multiplier: Array, threads: int) -> Array:
        """BitLinear of activations already quantised (x_q, 127 / gamma per token)."""
        accumulations = self.prepared.matmul(x_q, threads)
        return accumulations.astype(np.float32) * (self.scale / multiplier)


@dataclass
class BlockWeights:
    canon: Array | None
    norm_attn: Array
    qkv: TernaryLayer
    subnorm_attn: Array
    out: TernaryLayer
    norm_ffn: Array
    up: TernaryLayer
    subnorm_ffn: Array
    down: TernaryLayer


@dataclass
class DecodeState:
    """One sequence being decoded: its row of a KV batch and what it has produced."""

    cache: KVBatch
    row: int
    ids: list[int] = field(default_factory=list)
    generated: list[NextToken] = field(default_factory=list)
    finish_reason: str | None = None


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    scale = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps))
    return (x * scale.astype(np.float32) * weight).astype(np.float32)


class EdgeRuntime:
    """The edge model on CPU; `generate` follows the `LanguageModel` protocol."""

    def __init__(
        self,
        artifact: EdgeArtifact,
        *,
        kernel: str | None = None,
        threads: int = 1,
        name: str = "edge-ternary",
        seed: int = 0,
    ):
        self.artifact = artifact
        self.config: EdgeModelConfig = artifact.config
        self.kernel = select_kernel(kernel)
        self.threads = pin_threads(threads)
        self.tokenizer = CharTokenizer()
        self._name = name
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # one generation at a time (the sampler's state is shared)
        floats = artifact.floats
        self.tok_emb = floats["tok_emb.weight"]
        self.pos_emb = floats.get("pos_emb.weight")
        self.rotary = rotary_tables(self.config.head_dim, self.config.block_size)
        self.norm_out = floats["norm_out.weight"]
        self.blocks = [self._block(i) for i in range(self.config.n_layers)]

    @classmethod
    def load(cls, path: Path, **options: Any) -> EdgeRuntime:
        return cls(EdgeArtifact.load(path), **options)

    def _ternary(self, matrix: TernaryMatrix) -> TernaryLayer:
        return TernaryLayer(self.kernel.prepare(matrix.values()), np.float32(matrix.scale))

    def _block(self, index: int) -> BlockWeights:
        prefix = f"blocks.{index}."
        floats, ternary = self.artifact.floats, self.artifact.ternary
        return BlockWeights(
            canon=floats.get(prefix + "canon.weight"),
            norm_attn=floats[prefix + "norm_attn.weight"],
            qkv=self._ternary(ternary[prefix + "qkv"]),
            subnorm_attn=floats[prefix + "subnorm_attn.weight"],
            out=self._ternary(ternary[prefix + "out"]),
            norm_ffn=floats[prefix + "norm_ffn.weight"],
            up=self._ternary(ternary[prefix + "up"]),
            subnorm_ffn=floats[prefix + "subnorm_ffn.weight"],
            down=self._ternary(ternary[prefix + "down"]),
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def weight_bytes(self) -> int:
        """Bytes of prepared ternary weights the kernels stream per token."""
        return sum(
            layer.prepared.nbytes for b in self.blocks for layer in (b.qkv, b.out, b.up, b.down)
        )

    # -- the forward pass ---------------------------------------------------------------

    def forward(self, sequences: list[DecodeState], new_ids: list[list[int]]) -> Array:
        """Run the new tokens of each sequence through the model (extending its cache);
        returns the logits of each sequence's last new token, (len(sequences), vocab)."""
        cfg = self.config
        counts = [len(ids) for ids in new_ids]
        starts = [len(seq.ids) for seq in sequences]
        positions = np.concatenate(
            [np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)]
        )
        x = self.tok_emb[np.concatenate(new_ids)]
        if self.pos_emb is not None:
            x = x + self.pos_emb[positions]
        cos, sin = self.rotary[0][positions], self.rotary[1][positions]
        rotary = self.config.positions == "rotary"
        bounds = np.cumsum([0, *counts])
        eps, threads, d = cfg.norm_eps, self.threads, cfg.d_model
        one_cache = all(s.cache is sequences[0].cache for s in sequences)
        stepping = one_cache and all(c == 1 for c in counts)
        rows = np.repeat(np.asarray([s.row for s in sequences], np.int64), counts)  # per token
        if stepping:  # one token per sequence: each sees the cache up to its own position
            lengths = positions + 1
            total = int(lengths.max())
        for layer, block in enumerate(self.blocks):
            if block.canon is None:
                qkv = block.qkv.after_norm(x, block.norm_attn, eps, threads)
            else:
                x_q, multiplier = self._canon_quantized(
                    layer, block, x, sequences, rows, positions, bounds, one_cache
                )
                qkv = block.qkv.quantized(x_q, multiplier, threads)
            if rotary:  # q and k in one call: their heads side by side, the same rows
                qk = rotate(
                    qkv[:, : 2 * d].reshape(len(qkv), 2 * cfg.n_heads, cfg.head_dim), cos, sin
                )
                q, k = (
                    qk[:, : cfg.n_heads].reshape(len(qkv), d),
                    qk[:, cfg.n_heads :].reshape(len(qkv), d),
                )
            else:
                q, k = qkv[:, :d], qkv[:, d : 2 * d]
            v = qkv[:, 2 * d :]
            for i, seq in enumerate(sequences):
                span = slice(starts[i], starts[i] + counts[i])
                seq.cache.keys[layer, seq.row, span] = k[bounds[i] : bounds[i + 1]]
                seq.cache.values[layer, seq.row, span] = v[bounds[i] : bounds[i + 1]]
            if stepping:  # attend for the whole batch at once
                cache = sequences[0].cache
                keys, values = cache.keys[layer, rows, :total], cache.values[layer, rows, :total]
                mixed = attend_step(q, keys, values, lengths, cfg.n_heads)
            else:
                mixed = np.concatenate(
                    [
                        attend_prefill(
                            q[bounds[i] : bounds[i + 1]],
                            seq.cache.keys[layer, seq.row, : starts[i] + counts[i]],
                            seq.cache.values[layer, seq.row, : starts[i] + counts[i]],
                            cfg.n_heads,
                        )
                        for i, seq in enumerate(sequences)
                    ]
                )
            x = x + block.out.after_norm(mixed, block.subnorm_attn, eps, threads)
            hidden = np.square(np.maximum(block.up.after_norm(x, block.norm_ffn, eps, threads), 0))
            x = x + block.down.after_norm(hidden, block.subnorm_ffn, eps, threads)
        for seq, ids in zip(sequences, new_ids, strict=True):
            seq.ids.extend(ids)
        last = rms_norm(x[bounds[1:] - 1], self.norm_out, cfg.norm_eps)
        return (last @ self.tok_emb.T).astype(np.float32)

    def _canon_quantized(
        self,
        layer: int,
        block: BlockWeights,
        x: Array,
        sequences: list[DecodeState],
        rows: NDArray[np.int64],
        positions: NDArray[np.int64],
        bounds: NDArray[np.int64],
        one_cache: bool,
    ) -> tuple[NDArray[np.int8], Array]:
        """Store the layer's inputs (token n: cache row `rows[n]`, `positions[n]`), mix them
        with the inputs before them and quantise the mix for the attention's BitLinear, in
        one call per cache (`canon_norm_quantize`)."""
        assert block.canon is not None
        eps = self.config.norm_eps
        if one_cache:  # every decode step, and a generation's prefills
            inputs = sequences[0].cache.inputs[layer]
            return canon_norm_quantize(
                inputs, rows, positions, x, block.canon, block.norm_attn, eps
            )
        parts = [
            canon_norm_quantize(
                seq.cache.inputs[layer],
                rows[bounds[i] : bounds[i + 1]],
                positions[bounds[i] : bounds[i + 1]],
                np.ascontiguousarray(x[bounds[i] : bounds[i + 1]]),
                block.canon,
                block.norm_attn,
                eps,
            )
            for i, seq in enumerate(sequences)
        ]
        return np.concatenate([q for q, _ in parts]), np.concatenate([m for _, m in parts])

    # -- generation ---------------------------------------------------------------------

    def start(self, prompts: Sequence[str]) -> tuple[list[DecodeState], list[list[int]]]:
        """Empty decode states sharing one KV batch, and each prompt's ids (to pass to
        `forward`)."""
        encoded = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt, bos=True)
            if len(ids) >= self.config.block_size:
                raise InvalidInput(
                    f"prompt of {len(ids) - 1} characters exceeds the edge model's "
                    f"{self.config.block_size - 2}",
                    field="prompt",
                )
            encoded.append(ids)
        cfg = self.config
        cache = KVBatch(cfg.n_layers, len(prompts), cfg.block_size, cfg.d_model)
        return [DecodeState(cache, row) for row in range(len(prompts))], encoded

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        if max_new_tokens < 1:
            raise InvalidInput("must be at least 1", field="max_new_tokens")
        if temperature < 0:
            raise InvalidInput("must be >= 0", field="temperature")
        sequences, pending = self.start(prompts)
        # BLAS was capped to one thread process-wide when the runtime was built (`pin_threads`):
        # capping it again each call (threadpoolctl reads and sets every BLAS library's count,
        # then restores it) cost about 1% of the loop's CPU, for the same setting.
        with self._lock:
            active = list(range(len(sequences)))
            # Prompts are prefilled one by one (their lengths differ); decoding is batched.
            logits = (
                np.stack([self.forward([sequences[i]], [pending[i]])[0] for i in active])
                if active
                else None
            )
            while active and logits is not None:
                next_ids: list[list[int]] = []
                still: list[int] = []
                for row, i in enumerate(active):
                    seq = sequences[i]
                    choice = choose_token(
                        logits[row], temperature, top_logprobs, self._rng, self.tokenizer
                    )
                    self._advance(seq, choice, max_new_tokens, stop)
                    if seq.finish_reason is None:
                        still.append(i)
                        next_ids.append([choice.token_id])
                active = still
                logits = self.forward([sequences[i] for i in active], next_ids) if active else None
        return [
            self._result(seq, len(ids), stop) for seq, ids in zip(sequences, pending, strict=True)
        ]

    def _advance(
        self, seq: DecodeState, choice: NextToken, max_new_tokens: int, stop: Sequence[str]
    ) -> None:
        if choice.token_id == self.tokenizer.eos_id:
            seq.finish_reason = "stop"
            return
        seq.generated.append(choice)
        text = "".join(self.tokenizer.token(t.token_id) for t in seq.generated)
        if any(s and s in text for s in stop):
            seq.finish_reason = "stop"
        elif len(seq.generated) >= max_new_tokens or len(seq.ids) + 1 >= self.config.block_size:
            seq.finish_reason = "length"

    def _result(self, seq: DecodeState, prompt_tokens: int, stop: Sequence[str]) -> Generation:
        tokens = [self.tokenizer.token(t.token_id) for t in seq.generated]
        text = "".join(tokens)
        cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
        return Generation(
            text=text[:cut],
            tokens=tokens,
            logprobs=[t.logprob for t in seq.generated],
            entropies=[t.entropy for t in seq.generated],
            finish_reason=seq.finish_reason or "length",
            model=self.name,
            prompt_tokens=prompt_tokens,
            top_logprobs=[
                [TokenAlternative(a, lp) for a, lp in t.alternatives] for t in seq.generated
            ]
            if any(t.alternatives for t in seq.generated)
            else [],
        )
