"""RouteLLM's routing metrics (Ong et al., 2024, arXiv:2406.18665, section 5.1).

With a weak model (our smallest tier) and a strong one (our largest), a router's performance
gap recovered at a given share of strong-model calls is
`PGR = (accuracy - weak accuracy) / (strong accuracy - weak accuracy)`; APGR is its average
over call shares from 0 to 100% (the area under the PGR curve), and CPT(x%) is the smallest
share of strong-model calls that recovers x% of the gap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def performance_gap_recovered(accuracy: float, weak: float, strong: float) -> float:
    gap = strong - weak
    return (accuracy - weak) / gap if gap > 0 else float("nan")


def apgr(
    call_shares: Sequence[float], accuracies: Sequence[float], weak: float, strong: float
) -> float:
    """Area under PGR over call shares in [0, 1] (trapezoids over the given, sorted points)."""
    shares = np.asarray(call_shares, dtype=np.float64)
    pgr = np.asarray([performance_gap_recovered(a, weak, strong) for a in accuracies])
    order = np.argsort(shares)
    return float(np.trapezoid(pgr[order], shares[order]))


def calls_for_gap(
    call_shares: Sequence[float],
    accuracies: Sequence[float],
    weak: float,
    strong: float,
    fraction: float,
) -> float | None:
    """CPT: the smallest call share whose PGR reaches `fraction` (None if none does). A PGR
    within rounding of `fraction` reaches it: (0.6 - 0.4) / 0.4 is 0.4999... in floats."""
    for share, accuracy in sorted(zip(call_shares, accuracies, strict=True)):
        if performance_gap_recovered(accuracy, weak, strong) >= fraction - 1e-9:
            return float(share)
    return None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for predicting `positives` (ties count half):
    how well a signal ranks wrong answers above right ones."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(positives, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))
