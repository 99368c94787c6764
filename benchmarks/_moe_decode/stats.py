"""Paired statistics of the decoding benchmark: accuracy differences over the same tasks and
speed ratios of modes that ran back to back."""

from __future__ import annotations

import numpy as np

from benchmarks._report import bootstrap_median

Estimate = tuple[float, float, float]


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) over the same tasks and its 95% paired-bootstrap interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, (2000, a.size))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def paired_ratio(a: list[float], b: list[float]) -> Estimate:
    """Median of the per-round ratios a_i / b_i and its 95% bootstrap interval: the modes of
    a round ran back to back, so a ratio within a round cancels the machine's drift between
    rounds (other jobs come and go on a shared machine)."""
    return bootstrap_median([x / y for x, y in zip(a, b, strict=True)])


def points(d: Estimate) -> Estimate:
    """A share difference in percentage points."""
    return (100 * d[0], 100 * d[1], 100 * d[2])


def differences_sentence(over: str, diffs: dict[str, dict[str, Estimate]]) -> str:
    """One sentence of paired differences against every expert, a clause per mask with its
    grade spans: "Paired differences ... over `over`: name: grades 1-2 -0.5% [...], ...; ..."."""
    return (
        f"Paired differences against every expert (95% paired bootstrap over {over}): "
        + "; ".join(
            f"{name}: "
            + ", ".join(
                f"grades {span} {d[0]:+.1%} [{d[1]:+.1%}, {d[2]:+.1%}]" for span, d in by.items()
            )
            for name, by in diffs.items()
        )
        + "."
    )
