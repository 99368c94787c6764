"""The reference every serving test compares with: a model decoding one request alone through
`transformers`' own `generate` (greedy, up to the end token)."""

from __future__ import annotations

from typing import Any

import torch

from trifecta.cognitive.serving.codec import TokenCodec


def greedy_tokens(model: Any, codec: TokenCodec, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([codec.encode(prompt)])
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=codec.eos_id,
            pad_token_id=0,
        )
    tokens = out[0, ids.shape[1] :].tolist()
    return tokens[: tokens.index(codec.eos_id)] if codec.eos_id in tokens else tokens


def greedy_text(model: Any, codec: TokenCodec, prompt: str, max_new_tokens: int) -> str:
    return codec.decode(greedy_tokens(model, codec, prompt, max_new_tokens))
