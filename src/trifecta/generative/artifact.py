"""The shipped weights: one safetensors file, the config and a content hash in its metadata.

Stored in float16 (the cognitive tiers ship the same way): half the bytes, and the model is
evaluated after the round trip, so the reported accuracy is the shipped file's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from trifecta.core.errors import InvalidInput
from trifecta.generative.model import DiffusionConfig, DiffusionLM

FORMAT = "trifecta-diffusion-moe"
FORMAT_VERSION = "1"


def _digest(tensors: dict[str, torch.Tensor], config_json: str) -> str:
    h = hashlib.sha256(config_json.encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model(model: DiffusionLM, path: Path) -> None:
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    config_json = json.dumps(model.config.to_dict(), sort_keys=True)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_json,
        "sha256": _digest(tensors, config_json),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_model(path: Path) -> DiffusionLM:
    """The model in a file written by `save_model`, float32, eval mode; refuses anything else."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field="model") from None
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(f"{path} is not a {FORMAT} v{FORMAT_VERSION} file", field="model")
    if _digest(tensors, metadata["config"]) != metadata.get("sha256"):
        raise InvalidInput(f"{path} fails its content hash", field="model")
    model = DiffusionLM(DiffusionConfig(**json.loads(metadata["config"])))
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model.eval()
