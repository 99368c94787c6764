"""Where the generative layer's shipped files live, and the AR checkpoints it converts from."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from trifecta.core.errors import InvalidInput, NotFound

MODEL_FILE = "diffusion-moe.safetensors"
RECIPE_FILE = "diffusion-moe.recipe.json"  # `trifecta generative train --recipe` reproduces it
REPORT_FILE = "diffusion-moe.report.json"
# The cognitive layer's shipped autoregressive tiers (Hugging Face folders); read as files, so
# this layer does not import the cognitive package.
AR_TIERS = ("small", "medium", "large")
# A copy of the small tier's Llama checkpoint as the first model was converted from it, so
# its recipe reproduces the weights whatever the cognitive layer ships next.
VENDORED_SOURCE = "ar-source"
# A copy of the small tier as it is since it has Canon layers (look-ups 99%, sums 100%; its
# `training.json` beside it): what the named-scratchpad (previous) model was converted from.
VENDORED_CANON_SOURCE = "ar-small-canon"
# The medium tier as committed when the shipped, fine-grained model was converted from it
# (grades 3-5 84.5% / 66% / 45.5% in its `training.json`).
VENDORED_MEDIUM_SOURCE = "ar-medium-canon"
VENDORED = (VENDORED_SOURCE, VENDORED_CANON_SOURCE, VENDORED_MEDIUM_SOURCE)
SOURCES = (*VENDORED, *AR_TIERS)


def asset_dir() -> Path:
    return Path(str(resources.files("trifecta") / "assets" / "generative"))


def shipped_model_path() -> Path:
    path = asset_dir() / MODEL_FILE
    if not path.is_file():
        raise NotFound(
            f"the shipped generative model is missing ({path}); run `trifecta generative train`",
            field="model",
        )
    return path


def shipped_granularity() -> int:
    """FFN shards per expert group of the shipped model (its recipe's; the model file does not
    carry it): expert e is shard e % G (`convert`)."""
    import json

    recipe = asset_dir() / RECIPE_FILE
    return int(json.loads(recipe.read_text()).get("granularity", 1)) if recipe.is_file() else 1


def ar_checkpoint_dir(source: str = VENDORED_SOURCE) -> Path:
    """The AR checkpoint folder to convert: the vendored copy, or a live cognitive tier."""
    if source in VENDORED:
        return asset_dir() / source
    if source not in AR_TIERS:
        raise InvalidInput(f"unknown source {source!r}", field="source", allowed=SOURCES)
    return Path(str(resources.files("trifecta") / "assets" / "cognitive" / source))
