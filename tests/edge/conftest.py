"""Fixtures of the edge tests: a small model trained in seconds, and the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest

from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.config import EdgeModelConfig

SMALL = EdgeModelConfig(d_model=32, n_heads=2, n_layers=2, d_ff=64)


@pytest.fixture(scope="session")
def small_artifact() -> EdgeArtifact:
    """A 2-layer model after a few real training steps (not accurate, but trained weights)."""
    from trifecta.edge.train import TrainConfig, train

    return train(TrainConfig(steps=30, batch_size=16, model=SMALL)).artifact


@pytest.fixture(scope="session")
def small_artifact_path(
    small_artifact: EdgeArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return small_artifact.save(tmp_path_factory.mktemp("edge") / "small.safetensors")


@pytest.fixture(scope="session")
def shipped_artifact() -> EdgeArtifact:
    from trifecta.edge.assets import shipped_model_path

    return EdgeArtifact.load(shipped_model_path())
