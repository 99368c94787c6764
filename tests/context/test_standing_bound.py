"""The standing searches' bound (issue 16): a domain's view keeps at most
`standing_searches_kept` of them (least recently asked go first), the setting reaches the
views a server makes, and a kept search costs one copy of its query vector, not two. A search
is kept from its second ask (the doorkeeper): a stream of fresh prompts keeps none."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from trifecta.context.standing import SearchKey, StandingSearches
from trifecta.context.views import DomainView

DIM = 384  # the embedder's width: the size a server's entries have


def put_fresh(searches: StandingSearches, count: int, seed: int = 0) -> list[SearchKey]:
    """`count` searches of new queries, each query array dropped after the put (as the
    query-embedding cache drops its copy): what a stream of new prompts leaves behind."""
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(count):
        query = rng.standard_normal(DIM).astype(np.float32)
        key = SearchKey(query.tobytes(), 3, None, None)
        searches.put(key, query, [(f"m-{i:012x}", 0.5), (f"m-{i + 1:012x}", 0.4)])
        keys.append(key)
    return keys


def test_standing_searches_stay_within_their_bound_least_recently_asked_first() -> None:
    searches = StandingSearches(max_entries=8, first_asks=0)
    keys = put_fresh(searches, 8)
    assert searches.get(keys[0]) is not None  # asked again: now the most recent
    put_fresh(searches, 1, seed=1)
    assert len(searches) == 8
    assert searches.get(keys[1]) is None and searches.get(keys[0]) is not None
    put_fresh(searches, 100, seed=2)
    assert len(searches) == 8 and searches.get(keys[0]) is None
    assert (searches.hits, searches.misses) == (2, 2)


def test_a_bound_of_zero_keeps_nothing() -> None:
    searches = StandingSearches(max_entries=0, first_asks=0)
    keys = put_fresh(searches, 5)
    assert len(searches) == 0 and searches.get(keys[0]) is None


def test_the_setting_bounds_the_views_a_server_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIFECTA_CONTEXT_STANDING_SEARCHES_KEPT", "5")
    monkeypatch.setenv("TRIFECTA_CONTEXT_STANDING_SEARCHES_FIRST_ASKS", "0")
    view = DomainView("d")
    assert (view.searches.max_entries, view.searches.first_asks) == (5, 0)
    put_fresh(view.searches, 50)
    assert len(view.searches) == 5
    monkeypatch.delenv("TRIFECTA_CONTEXT_STANDING_SEARCHES_KEPT")
    monkeypatch.delenv("TRIFECTA_CONTEXT_STANDING_SEARCHES_FIRST_ASKS")
    defaults = StandingSearches()
    assert (defaults.max_entries, defaults.first_asks) == (256, 1024)


def test_a_search_is_kept_at_its_second_ask_so_fresh_prompts_keep_none() -> None:
    searches = StandingSearches(max_entries=8, first_asks=4)
    keys = put_fresh(searches, 100)  # each asked once: remembered by hash, never kept
    assert len(searches) == 0 and len(searches._asked_once) == 4
    again = put_fresh(searches, 3, seed=1)
    assert len(searches) == 0
    put_fresh(searches, 3, seed=1)  # the second ask of each: kept now
    assert len(searches) == 3 and all(searches.get(k) is not None for k in again)
    assert searches.get(keys[0]) is None  # its first ask was forgotten (4 remembered)


def test_first_asks_cost_a_hash_not_a_search() -> None:
    """Measured: about 0.1 KB a remembered first ask against 2.4 KB a kept search."""
    searches = StandingSearches(max_entries=256, first_asks=1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        put_fresh(searches, 1000)
        per_ask = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    assert len(searches) == 0 and per_ask < 200


def test_a_kept_search_holds_one_copy_of_its_query() -> None:
    """Measured: 2.4 KB an entry (the key's 1,536 query bytes, the top-k, the objects);
    3.9 KB when the query's array was kept beside its bytes."""
    searches = StandingSearches(max_entries=1000, first_asks=0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        put_fresh(searches, 1000)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    assert 4 * DIM < per_entry < 2 * 4 * DIM + 200  # one copy of the vector and a little
    kept = searches._entries.values()  # the vectors the merge scores are the keys' bytes
    assert all(entry.query.base is entry.key.query for entry in kept)
