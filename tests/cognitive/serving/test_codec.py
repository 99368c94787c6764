"""The codec's prompt encoding: the fast tokenizer's own tokenizer called directly gives the
ids the wrapper's `encode` gives, and the wrapper still decides when it would truncate."""

from __future__ import annotations

import pytest

from trifecta.cognitive.checkpoints import build_tokenizer
from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DEFAULT_MIX, generate_tasks

TEXTS = [t.prompt for t in generate_tasks(200, seed=11, split="heldout", difficulties=DEFAULT_MIX)]
TEXTS += ["", " a  b ", "héllo wörld ✓", "t=41;t?" * 20]


def test_direct_encoding_matches_the_wrappers() -> None:
    tokenizer = build_tokenizer()
    codec = TokenCodec(tokenizer)
    assert codec._backend is not None  # the shipped tiers' tokenizer is a fast one
    for text in TEXTS:
        expected = list(tokenizer.encode(text, add_special_tokens=False))
        assert codec.encode(text) == [codec.bos_id, *expected]


def test_a_truncating_tokenizer_goes_through_the_wrapper() -> None:
    tokenizer = build_tokenizer()
    codec = TokenCodec(tokenizer, add_bos=False)
    tokenizer.backend_tokenizer.enable_truncation(max_length=4)
    try:
        # The wrapper's `encode` turns the truncation off again for a call that asks none.
        assert len(codec.encode("t=41,p=17,r=63;t+r?")) == len("t=41,p=17,r=63;t+r?")
    finally:
        tokenizer.backend_tokenizer.no_truncation()


def test_an_unencodable_prompt_names_its_field() -> None:
    class Refusing:
        eos_token_id, bos_token_id = 1, 0
        backend_tokenizer = None

        def __len__(self) -> int:
            return 2

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            raise ValueError("no such character")

    with pytest.raises(InvalidInput) as caught:
        TokenCodec(Refusing()).encode("x", field="messages")
    assert caught.value.field == "messages"
