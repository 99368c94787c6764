"""The slot cache's row copies (run as scripted calls): a prefix loaded into a slot and a row
moved into a hole land exactly where the per-plane copies put them, and nothing else moves."""

from __future__ import annotations

import pytest
import torch

from trifecta.cognitive.serving.slot_cache import SlotCache


def test_load_and_move_copy_exactly_the_named_columns() -> None:
    torch.manual_seed(0)
    cache = SlotCache(3, 10, [(2, 4), (5,)])
    for plane in cache.planes:
        plane.normal_()
    expected = [plane.clone() for plane in cache.planes]
    prefix = cache.read(0, 6)
    cache.load(2, prefix)
    cache.move(1, 0, 7)
    for plane, want in zip(cache.planes, expected, strict=True):
        want[2, :6] = want[0, :6].clone()
        want[0, :7] = want[1, :7]
        assert torch.equal(plane, want)


def test_a_prefix_of_another_cache_shape_is_refused() -> None:
    cache = SlotCache(2, 8, [(3,), (3,)])
    with pytest.raises(ValueError, match="1 planes"):
        cache.load(0, [torch.zeros(1, 4, 3)])
