"""BitLinear as BitNet b1.58 defines it, in PyTorch.

Weights: absmean quantisation to {-1, 0, +1} times one per-tensor scale,
    beta = mean(|W|),  W_t = clamp(round(W / beta), -1, 1).
Activations: per-token absmax quantisation to 8 bits,
    gamma = max(|x|) over the features of a token,  x_q = clamp(round(x * 127 / gamma), -128, 127).
Output: (x_q @ W_t^T) * beta / (127 / gamma).
Training keeps latent float weights and passes gradients straight through both roundings
(the straight-through estimator). Sources: Ma et al., "The Era of 1-bit LLMs: All Large
Language Models are in 1.58 Bits" (arXiv:2402.17764) and its "Training Tips, Code and FAQ".

In eval mode the layer computes the integer product itself (`integer_matmul`), in float32:
every partial sum is an integer below 2^24, so it is exact and equals what the torch-free
runtime's int32 kernels compute, and the output scaling uses the same float32 operations in
the same order as the runtime does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_LEVELS = 127.0
MIN_SCALE = 1e-5


def ternary_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean quantisation: (ternary values in {-1, 0, 1} as float, scale beta)."""
    beta = weight.abs().mean().clamp(min=MIN_SCALE)
    return (weight / beta).round().clamp(-1, 1), beta


def int8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax quantisation: (integers in [-128, 127] as float, multiplier 127/gamma)."""
    gamma = x.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_SCALE)
    # tensor / tensor: a correctly rounded division, as numpy and numba do (a Python number
    # divided by a tensor is computed by torch as reciprocal-then-multiply, one ulp apart)
    multiplier = torch.full_like(gamma, ACTIVATION_LEVELS) / gamma
    return (x * multiplier).round().clamp(-128, 127), multiplier


class BitLinear(nn.Linear):
    """A bias-free linear layer with ternary weights and 8-bit activations."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        # A frozen copy of the ternary weights (set by `freeze`): the layer then serves exactly
        # the weights of a packed artifact instead of re-quantising its latent weights.
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None
        self.full_precision = False

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frozen if self.frozen is not None else ternary_weights(self.weight)

    def freeze(self, ternary: torch.Tensor, beta: float) -> None:
        self.frozen = (ternary.to(torch.float32), torch.tensor(beta, dtype=torch.float32))

    def integer_matmul(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_q @ W_t^T as exact integers in float32, the per-token multiplier 127/gamma)."""
        x_q, multiplier = int8_activations(x)
        ternary, _ = self.quantized_weight()
        return F.linear(x_q, ternary), multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_precision:  # the float warm-up phase of training (see `train`)
            return F.linear(x, self.weight)
        if self.training and self.frozen is None:
            x_q, multiplier = int8_activations(x)
            w_t, beta = ternary_weights(self.weight)
            # Straight-through estimator: forward the quantised values, backward the identity.
            x_ste = x + (x_q / multiplier - x).detach()
            w_ste = self.weight + (w_t * beta - self.weight).detach()
            return F.linear(x_ste, w_ste)
        accumulations, multiplier = self.integer_matmul(x)
        _, beta = self.quantized_weight()
        return accumulations * (beta / multiplier)
