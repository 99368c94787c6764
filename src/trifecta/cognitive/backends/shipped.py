"""Backend over the shipped tiny tiers: the embedded default standing for UserLM 8B/13B/70B.

A shipped tier is an ordinary Hugging Face directory, so this is the local Hugging Face
backend pointed at it, priced by the sizing of the checkpoint it stands for. Its vocabulary
falls back to UTF-8 bytes, so any text is a prompt it answers (however poorly, outside the
task family).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from trifecta.cognitive.backends.huggingface import HuggingFaceBackend
from trifecta.cognitive.cost import TierCost, tier_cost
from trifecta.cognitive.tiers import get_tier, load_tier

_lock = threading.Lock()
_loaded: dict[str, TierBackend] = {}


class TierBackend(HuggingFaceBackend):
    """One shipped tier (`small`, `medium`, `large`)."""

    def __init__(self, tier: str, *, batch_size: int = 64, seed: int = 0):
        spec = get_tier(tier)
        model, tokenizer = load_tier(tier)
        self.cost: TierCost = tier_cost(tier)
        super().__init__(
            model,
            tokenizer,
            name=spec.name,
            cost_per_token=self.cost.usd_per_token,
            batch_size=batch_size,
            seed=seed,
        )
        self.spec = spec


def shipped_tier(tier: str) -> TierBackend:
    """The process-wide backend of a shipped tier (weights load once, on first use)."""
    with _lock:
        backend = _loaded.get(tier)
        if backend is None:
            backend = _loaded[tier] = TierBackend(tier)
        return backend


def shipped_tiers(names: Sequence[str]) -> list[TierBackend]:
    return [shipped_tier(name) for name in names]
