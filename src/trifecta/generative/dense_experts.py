"""The MoE layer as one dense FFN over a mask's few active experts.

When a mask leaves a layer top-k experts (the half mask: 4 of 8 at top-4), every token runs
every active expert, so the layer is a dense SwiGLU whose hidden units are the active
experts' side by side, each expert's block of units scaled by its gate. Computed that way it
is two matmuls over weights stacked once per mask, with no sort of (token, expert) pairs, no
per-expert call and no scatter-add: the same multiply-adds as the dispatch, without the
dispatch's bookkeeping, which is what a decode step of a few hundred positions pays for.

With a few more active experts than k (the verified mask's 6 of 8 in one layer) the dense
form computes every active expert for every token, a zero gate where the router did not pick
it: more multiply-adds than the dispatch, cheaper below a measured number of positions
(`MoE.forward` decides; `docs/generative.md` has the figures).

Stacking the experts' weights is ours: torch has no fused grouped-SwiGLU for CPU inference.

Shapes: N tokens, D d_model, A active experts, F each expert's hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StackedExperts:
    """A mask's active experts as one SwiGLU: inputs (2*A*F, D), gate rows of every expert
    then up rows; outputs (D, A*F), expert a's down projection in columns a*F:(a+1)*F."""

    w_in: torch.Tensor
    w_out: torch.Tensor
    experts: int  # A

    @classmethod
    def of(
        cls,
        gate: Sequence[torch.Tensor],  # A x (F, D)
        up: Sequence[torch.Tensor],  # A x (F, D)
        down: Sequence[torch.Tensor],  # A x (D, F)
    ) -> StackedExperts:
        w_in = torch.cat([*gate, *up]).detach().contiguous()  # (2*A*F, D)
        w_out = torch.cat(list(down), dim=1).detach().contiguous()  # (D, A*F)
        return cls(w_in, w_out, len(gate))

    def __call__(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x (N, D), gates (N, A) (zero for an expert a token did not select) -> (N, D)."""
        N = x.shape[0]
        hidden_gate, hidden_up = F.linear(x, self.w_in).chunk(2, dim=1)  # (N, A*F) each
        hidden = (F.silu(hidden_gate) * hidden_up).view(N, self.experts, -1)  # (N, A, F)
        hidden = hidden * gates[:, :, None]  # each expert's units scaled by its gate
        return F.linear(hidden.view(N, -1), self.w_out)  # (N, D)
