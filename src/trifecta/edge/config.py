"""The shape of the edge model, shared by the PyTorch model and the torch-free runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trifecta.core.tokenizer import CharTokenizer

# Every ternary matrix dimension is a multiple of this, so that each kernel's blocked layout
# (16 rows x 16 inputs per 64-byte block) tiles it without padding.
DIM_MULTIPLE = 16


class EdgeModelConfig(BaseModel):
    """A small pre-norm transformer whose linear layers are BitLinear (BitNet b1.58).

    Embeddings, norms and attention stay in float32, as in the BitNet b1.58 papers; only the
    projections inside each block are ternary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(default_factory=lambda: CharTokenizer().vocab_size, gt=0)
    d_model: int = Field(default=64, gt=0)
    n_layers: int = Field(default=2, gt=0)
    n_heads: int = Field(default=4, gt=0)
    d_ff: int = Field(default=256, gt=0)
    block_size: int = Field(default=48, gt=0, description="longest sequence, prompt plus answer")
    norm_eps: float = Field(default=1e-5, gt=0)
    positions: Literal["rotary", "learned"] = Field(
        default="rotary", description="rotary (RoPE, as in BitNet b1.58) or a learned embedding"
    )
    canon_width: int = Field(
        default=4,
        ge=0,
        le=8,
        description="tokens mixed by the causal 'Canon' layer before each attention (0: none)",
    )

    @model_validator(mode="after")
    def _dims(self) -> EdgeModelConfig:
        for name in ("d_model", "d_ff"):
            if getattr(self, name) % DIM_MULTIPLE:
                raise ValueError(f"{name} must be a multiple of {DIM_MULTIPLE}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must be an even multiple of n_heads")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def ternary_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each ternary projection of one block."""
        d, ff = self.d_model, self.d_ff
        return {"qkv": (3 * d, d), "out": (d, d), "up": (ff, d), "down": (d, ff)}

    def float_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every float32 tensor of the model (embeddings, norm gains, Canon weights) by name."""
        d = self.d_model
        shapes: dict[str, tuple[int, ...]] = {
            "tok_emb.weight": (self.vocab_size, d),
            "norm_out.weight": (d,),
        }
        if self.positions == "learned":
            shapes["pos_emb.weight"] = (self.block_size, d)
        for i in range(self.n_layers):
            for norm, width in (
                ("norm_attn", d),
                ("subnorm_attn", d),
                ("norm_ffn", d),
                ("subnorm_ffn", self.d_ff),
            ):
                shapes[f"blocks.{i}.{norm}.weight"] = (width,)
            if self.canon_width:
                shapes[f"blocks.{i}.canon.weight"] = (self.canon_width, d)
        return shapes

    def ternary_parameters(self) -> int:
        return self.n_layers * sum(n * k for n, k in self.ternary_shapes().values())
