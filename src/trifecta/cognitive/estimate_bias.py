"""How far the entropy an endpoint backend estimates from `top_logprobs` is from the exact one.

An OpenAI-compatible endpoint reports the `k` most likely alternatives at each step, not the
whole distribution. We run the shipped tiers locally, where the exact entropy is known, take
the same top-`k` log-probabilities an endpoint would return, and compare the estimate with the
exact value step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.cognitive.backends.base import MAX_TOP_LOGPROBS, Backend
from trifecta.cognitive.entropy import entropy_from_top_logprobs

TOP_KS: tuple[int, ...] = (1, 2, 5, 10, 20)


@dataclass(frozen=True)
class EstimateBias:
    tier: str
    k: int
    steps: int
    mean_bias: float  # mean of (estimate - exact), nats; never positive (a lower bound)
    mean_abs_error: float
    max_abs_error: float
    mean_exact: float


def estimate_bias(
    backends: Sequence[Backend],
    prompts: Sequence[str],
    *,
    ks: Sequence[int] = TOP_KS,
    max_new_tokens: int = 6,
) -> list[EstimateBias]:
    """Bias of the top-`k` estimate against the exact entropy, per tier and `k`."""
    results = []
    for backend in backends:
        outputs = backend.generate(
            list(prompts), max_new_tokens=max_new_tokens, top_logprobs=MAX_TOP_LOGPROBS
        )
        exact = np.array([h for g in outputs for h in g.entropies])
        tops = [
            [a.logprob for a in alternatives] for g in outputs for alternatives in g.top_logprobs
        ]
        for k in ks:
            estimate = np.array([entropy_from_top_logprobs(top[:k]) for top in tops])
            error = estimate - exact
            results.append(
                EstimateBias(
                    tier=backend.name,
                    k=k,
                    steps=int(exact.size),
                    mean_bias=float(error.mean()),
                    mean_abs_error=float(np.abs(error).mean()),
                    max_abs_error=float(np.abs(error).max()),
                    mean_exact=float(exact.mean()),
                )
            )
    return results


def bias_markdown(rows: Sequence[EstimateBias]) -> str:
    lines = [
        "| tier | top-k | steps | mean exact entropy | mean bias | mean abs error "
        "| max abs error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tier} | {r.k} | {r.steps} | {r.mean_exact:.4f} | {r.mean_bias:+.4f} "
            f"| {r.mean_abs_error:.4f} | {r.max_abs_error:.4f} |"
        )
    return "\n".join(lines)
