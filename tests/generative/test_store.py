"""Bias versions are appended, logged and revertible; masks and traffic persist."""

from __future__ import annotations

import pytest
import torch

from trifecta.core.db import get_engine
from trifecta.core.errors import NotFound
from trifecta.generative.selection import ExpertMask
from trifecta.generative.store import GenerativeStore


@pytest.fixture
def store(sqlite_url: str) -> GenerativeStore:
    return GenerativeStore(get_engine(sqlite_url))


def test_versions_append_and_revert(store: GenerativeStore) -> None:
    assert store.current_bias("c1", (2, 8)).version == 0
    first = store.put_bias("c1", torch.full((2, 8), 0.1), "load: 4 requests")
    second = store.put_bias("c1", torch.full((2, 8), -0.2), "feedback: failure")
    assert (first.version, second.version) == (1, 2)
    reverted = store.revert_bias("c1", 1, (2, 8))
    assert reverted.version == 3 and reverted.reason == "revert to version 1"
    assert torch.allclose(store.current_bias("c1", (2, 8)).tensor(), torch.full((2, 8), 0.1))
    assert store.revert_bias("c1", 0, (2, 8)).tensor().abs().sum() == 0
    assert [v.version for v in store.bias_history("c1")] == [1, 2, 3, 4]
    assert store.current_bias("c2", (2, 8)).version == 0  # capsules are separate


def test_reverting_to_a_missing_version_names_the_field(store: GenerativeStore) -> None:
    with pytest.raises(NotFound) as err:
        store.revert_bias("c1", 7, (2, 8))
    assert err.value.field == "revert"


def test_state_survives_a_new_store(sqlite_url: str) -> None:
    store = GenerativeStore(get_engine(sqlite_url))
    store.put_mask("c1", ExpertMask(layers=[[0, 1], [2, 3]], source="learned"))
    store.add_traffic("c1", torch.ones(2, 8), 3)
    store.add_traffic("c1", torch.ones(2, 8), 2)
    store.put_bias("c1", torch.full((2, 8), 0.05), "load: 1 requests")
    again = GenerativeStore(get_engine(sqlite_url))
    assert again.mask("c1") == ExpertMask(layers=[[0, 1], [2, 3]], source="learned")
    traffic = again.traffic("c1")
    assert traffic is not None and traffic[1] == 5 and float(traffic[0][0, 0]) == 2.0
    assert again.current_bias("c1", (2, 8)).version == 1
    assert again.clear_mask("c1") and again.mask("c1") is None
