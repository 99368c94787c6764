"""The shipped edge model: a packed artifact, its training recipe and its evaluation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from trifecta.core.errors import NotFound

MODEL_FILE = "edge-model.safetensors"
RECIPE_FILE = "edge-model.recipe.json"  # `trifecta edge train --recipe` reproduces the model
REPORT_FILE = "edge-model.report.json"


def asset_dir() -> Path:
    return Path(str(resources.files("trifecta") / "assets" / "edge"))


def shipped_model_path() -> Path:
    path = asset_dir() / MODEL_FILE
    if not path.is_file():
        raise NotFound(
            f"the shipped edge model is missing ({path}); run `trifecta edge train`", field="model"
        )
    return path
