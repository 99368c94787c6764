"""Fixtures of the generative tests: a converted (untrained) model is enough for mechanics;
behaviour on tasks uses the shipped model."""

from __future__ import annotations

import pytest
import torch

from trifecta.generative.assets import ar_checkpoint_dir
from trifecta.generative.convert import convert_llama
from trifecta.generative.model import DiffusionLM


@pytest.fixture(scope="session")
def converted() -> DiffusionLM:
    """The small AR tier converted and upcycled, before any diffusion training."""
    torch.set_num_threads(1)
    return convert_llama(ar_checkpoint_dir()).eval()


@pytest.fixture(scope="session")
def shipped() -> DiffusionLM:
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path

    torch.set_num_threads(1)
    return load_model(shipped_model_path())
