"""Fixtures of the serving tests: small seeded models and the small tier's token rate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from trifecta.cognitive.serving.cost import TierRate, tier_rate
from trifecta.cognitive.serving.factory import random_model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Decode on one intra-op thread, as the server does (and restore torch's setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny() -> tuple[Any, Any]:
    """A seeded random Llama over the character vocabulary (64 positions)."""
    return random_model(seed=0)


@pytest.fixture(scope="session")
def long_context() -> tuple[Any, Any]:
    """The same kind of model with room for long completions (a stream to walk away from)."""
    return random_model(seed=1, context_length=512)


@pytest.fixture(scope="session")
def small_rate() -> TierRate:
    return tier_rate("small", preset="userlm-8b", accelerator="a10", phase="dev", batch=16)
