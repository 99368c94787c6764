"""Online router-bias tuning per capsule: the two update rules, bounded.

A capsule's biases (n_layers, E) are added to the router's selection scores (never to the
gate values), so they change which experts its tokens go to, not how outputs are weighted.

- Load (DeepSeek-V3's auxiliary-loss-free rule, Liu et al. 2024, sec. 2.1.2): after a batch
  with expert loads c (tokens routed), b_i <- b_i + load_step * sign(mean(c) - c_i): an
  overloaded expert loses `load_step`, an underloaded one gains it.
- Outcome feedback (the ReasoningBank signal: a verified success or failure of a request):
  b <- b + feedback_step * (+1 on success, -1 on failure) * u, where u is the request's
  usage, the share of each layer's routed tokens that went to each expert (rows sum to 1).
  Experts that carried a success gain in proportion to how much they carried it.

Both results are clipped to [-bound, bound], so no sequence of updates can push an expert
out of reach (or lock one in) for good.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


class TuningConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    load_step: float = Field(default=0.002, ge=0)
    feedback_step: float = Field(default=0.02, ge=0)
    bound: float = Field(default=0.25, gt=0)


def load_update(
    bias: torch.Tensor,
    load: torch.Tensor,
    config: TuningConfig,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepSeek-V3's rule on (n_layers, E) biases from (n_layers, E) token counts. With an
    expert mask `active` (n_layers, E), the mean is over the active experts and only they
    move (a masked expert's zero load is not a call for more traffic)."""
    if active is None:
        active = torch.ones_like(load, dtype=torch.bool)
    mean = (load * active).sum(dim=1, keepdim=True) / active.sum(dim=1, keepdim=True)
    step = config.load_step * torch.sign(mean - load) * active
    return (bias + step).clamp(-config.bound, config.bound)


def usage(load: torch.Tensor) -> torch.Tensor:
    """Each layer's routed-token counts as shares (rows sum to 1; an empty row stays 0)."""
    return load / load.sum(dim=1, keepdim=True).clamp_min(1e-9)


def feedback_update(
    bias: torch.Tensor, load: torch.Tensor, success: bool, config: TuningConfig
) -> torch.Tensor:
    """The outcome rule: experts used on a success gain, on a failure lose."""
    sign = 1.0 if success else -1.0
    updated = bias + config.feedback_step * sign * usage(load)
    return updated.clamp(-config.bound, config.bound)
