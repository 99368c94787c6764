"""The character tokenizer: stable ids, byte fallback for any text, exact round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import ALPHABET
from trifecta.core.tokenizer import BYTE_TOKENS, SPECIALS, CharTokenizer

BYTES = CharTokenizer(byte_fallback=True)
ALPHABET_ONLY = CharTokenizer()


def test_the_first_ids_never_move() -> None:
    """Appending byte tokens keeps every id a model trained on the alphabet has learnt."""
    assert BYTES.vocab[: ALPHABET_ONLY.vocab_size] == ALPHABET_ONLY.vocab
    assert ALPHABET_ONLY.vocab == [*SPECIALS, *ALPHABET] and ALPHABET_ONLY.vocab_size == 46
    assert BYTES.vocab[46:] == list(BYTE_TOKENS) and BYTES.vocab_size == 46 + 256


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    ids = BYTES.encode(text, bos=True, eos=True)
    assert ids[0] == BYTES.bos_id and ids[-1] == BYTES.eos_id
    assert all(0 <= i < BYTES.vocab_size for i in ids)
    assert BYTES.decode(ids) == text


@given(st.text(alphabet=ALPHABET))
def test_the_family_s_text_is_one_token_per_character(text: str) -> None:
    assert BYTES.encode(text) == ALPHABET_ONLY.encode(text) and len(BYTES.encode(text)) == len(text)


def test_other_characters_become_their_utf8_bytes() -> None:
    ids = BYTES.encode("7*6 é")
    assert [BYTES.token(i) for i in ids] == ["7", "<0x2A>", "6", "<0x20>", "<0xC3>", "<0xA9>"]
    assert BYTES.encode("<eos>")[0] == BYTES.first_byte_id + ord("<")  # typed text, not the token


@given(st.lists(st.integers(0, 255), max_size=12))
def test_any_byte_sequence_a_model_generates_decodes(raw: list[int]) -> None:
    text = BYTES.decode([BYTES.first_byte_id + b for b in raw])
    assert text == bytes(raw).decode("utf-8", "replace") or text == bytes(raw).decode(
        "utf-8", "surrogatepass"
    )


def test_without_byte_fallback_an_unknown_character_names_the_prompt() -> None:
    with pytest.raises(InvalidInput) as error:
        ALPHABET_ONLY.encode("What is 7*6?")
    assert error.value.field == "prompt" and "'W'" in error.value.message
