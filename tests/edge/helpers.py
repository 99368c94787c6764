"""Helpers shared by the edge tests: artifact header surgery, and the reference's tokens."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from trifecta.core.tokenizer import CharTokenizer
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.model import EdgeTransformer


def header_length(path: Path) -> int:
    return int(struct.unpack("<Q", path.read_bytes()[:8])[0])


def rewrite_metadata(source: Path, target: Path, **changes: str) -> None:
    data = source.read_bytes()
    length = header_length(source)
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def reference_texts(artifact: EdgeArtifact, prompts: list[str], max_new_tokens: int) -> list[str]:
    tokenizer = CharTokenizer()
    model = EdgeTransformer.from_artifact(artifact)
    texts = []
    for prompt in prompts:
        ids = model.greedy_ids(tokenizer.encode(prompt, bos=True), max_new_tokens, tokenizer.eos_id)
        texts.append(tokenizer.decode([i for i in ids if i != tokenizer.eos_id]))
    return texts
