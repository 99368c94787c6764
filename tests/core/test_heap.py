"""Freezing the start-up heap: what is alive is exempt from collection, the rest is not."""

from __future__ import annotations

import gc
import weakref

from trifecta.core.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.self_ref = self  # a reference cycle: only the collector frees it


def test_frozen_objects_stay_and_new_garbage_is_still_collected() -> None:
    survivor = Node()
    try:
        frozen = freeze_startup_heap()
        # Frozen objects freed by reference counting since (other threads of a long test
        # session) leave the permanent generation, so the count can only have dropped.
        assert 0 < gc.get_freeze_count() <= frozen
        survivor_ref = weakref.ref(survivor)
        later = Node()
        later_ref = weakref.ref(later)
        del survivor, later
        gc.collect()
        assert survivor_ref() is not None  # frozen: never scanned, never freed
        assert later_ref() is None  # created after the freeze: collected as usual
    finally:
        gc.unfreeze()
