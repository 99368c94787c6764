"""The bullet rankings' bound (issue 16): a domain's view remembers at most
`bullet_rankings_kept` rankings (least recently asked dropped first, not all at once), and the
setting reaches the views a server makes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trifecta.context.models import Bullet
from trifecta.context.views import DomainView

DIM = 384


def view_with_bullets(rankings_kept: int | None = None) -> DomainView:
    view = DomainView("d", rankings_kept=rankings_kept)
    rng = np.random.default_rng(0)
    now = time.time()
    for i in range(10):
        bullet = Bullet(
            id=f"b{i}", section="s", content=f"rule {i}", created_at=now, updated_at=now
        )
        view.bullets[bullet.id] = bullet
        view.bullet_vectors[bullet.id] = rng.standard_normal(DIM).astype(np.float32)
    return view


def queries(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(DIM).astype(np.float32) for _ in range(count)]


def test_rankings_stay_within_their_bound_least_recently_asked_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRIFECTA_CONTEXT_STANDING_SEARCHES_FIRST_ASKS", "0")  # kept at once
    view = view_with_bullets(rankings_kept=4)
    first = queries(4, seed=1)
    rankings = [view.ranked_bullets(q) for q in first]
    assert view.ranked_bullets(first[0]) == rankings[0]  # asked again: now the most recent
    view.ranked_bullets(queries(1, seed=2)[0])
    kept = set(view._rankings)
    assert len(kept) == 4
    assert first[0].tobytes() in kept and first[1].tobytes() not in kept  # one dropped, not all
    for q in queries(50, seed=3):
        view.ranked_bullets(q)
    assert len(view._rankings) == 4
    # A dropped ranking is recomputed the same.
    assert view.ranked_bullets(first[1]) == rankings[1]


def test_a_bound_of_zero_keeps_no_ranking() -> None:
    view = view_with_bullets(rankings_kept=0)
    q = queries(1, seed=4)[0]
    assert view.ranked_bullets(q) == view.ranked_bullets(q)
    assert len(view._rankings) == 0


def test_the_setting_bounds_the_views_a_server_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIFECTA_CONTEXT_BULLET_RANKINGS_KEPT", "3")
    assert DomainView("d").rankings_kept == 3
    monkeypatch.delenv("TRIFECTA_CONTEXT_BULLET_RANKINGS_KEPT")
    assert DomainView("d").rankings_kept == 256  # the default


def test_a_ranking_is_kept_from_its_second_ask() -> None:
    """As a standing search (`standing.py`): fresh queries keep no ranking."""
    view = view_with_bullets(rankings_kept=4)
    for q in queries(50, seed=5):
        view.ranked_bullets(q)
    assert len(view._rankings) == 0
    q = queries(1, seed=6)[0]
    first = view.ranked_bullets(q)
    assert view.ranked_bullets(q) == first and list(view._rankings) == [q.tobytes()]
