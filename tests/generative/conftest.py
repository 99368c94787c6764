"""Fixtures of the generative tests: a converted (untrained) model is enough for mechanics;
behaviour on tasks uses the shipped model; the layer in the product uses one real stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from trifecta.generative.assets import ar_checkpoint_dir
from trifecta.generative.convert import convert_llama
from trifecta.generative.model import DiffusionLM

if TYPE_CHECKING:
    from trifecta.orchestrator.stack import Stack


@pytest.fixture(scope="session")
def converted() -> DiffusionLM:
    """The small AR tier converted and upcycled, before any diffusion training."""
    torch.set_num_threads(1)
    return convert_llama(ar_checkpoint_dir()).eval()


def mask_experts(top_k: int) -> list[int]:
    """A configured mask's experts for a model of this top-k: one more than top-k, so the
    router still chooses (0, 2, 5 for top-2)."""
    return [0, 2, 5, 6, 7][: max(3, top_k + 1)]


def shipped_shape() -> tuple[int, int, int]:
    """The shipped model's (layers, experts, top-k), read from its file's config."""
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path

    config = load_model(shipped_model_path()).config
    return config.n_layers, config.n_experts, config.top_k


@pytest.fixture(scope="session")
def shipped() -> DiffusionLM:
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path

    torch.set_num_threads(1)
    return load_model(shipped_model_path())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real embedded stack on SQLite (tiers, context, generative layer, edge mesh), shared
    by the tests of the generative layer in the product, each with capsules of its own."""
    from trifecta.core import db
    from trifecta.core.settings import Settings
    from trifecta.orchestrator.stack import Stack

    data = Path(tmp_path_factory.mktemp("generative-stack"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    built = Stack(settings=settings)
    try:
        yield built
    finally:
        built.close()
        db.dispose_engines()
