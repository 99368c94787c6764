"""The character tokenizer of the shipped models (cognitive tiers, edge model, generative).

One id per character of the task family's alphabet plus four specials (ids 0-45). With
`byte_fallback`, 256 byte tokens follow (`<0x00>`..`<0xFF>`, ids 46-301): any other character
is written as the bytes of its UTF-8 encoding, as Llama's and Mistral's tokenizers do, so any
text is accepted and decodes back to itself. The first 46 ids never change, so a model trained
on the alphabet alone (the edge artifact) keeps its meaning. Pure Python, so the torch-free
edge runtime uses it too; the cognitive layer exports the same vocabulary as a Hugging Face
`tokenizer.json` so its tiers load through `transformers` like any checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import ALPHABET

PAD, BOS, EOS, MASK = "<pad>", "<bos>", "<eos>", "<mask>"
SPECIALS = (PAD, BOS, EOS, MASK)
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))


class CharTokenizer:
    """Characters of `alphabet` <-> ids; ids 0-3 are PAD, BOS, EOS, MASK. With `byte_fallback`,
    any other character is encoded as the byte tokens of its UTF-8 encoding (otherwise it is an
    `InvalidInput` naming the prompt)."""

    def __init__(self, alphabet: str = ALPHABET, *, byte_fallback: bool = False):
        self.byte_fallback = byte_fallback
        self.vocab: list[str] = [*SPECIALS, *alphabet, *(BYTE_TOKENS if byte_fallback else ())]
        self.ids: dict[str, int] = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = range(4)
        self.first_byte_id = len(SPECIALS) + len(alphabet)  # id of <0x00> when present

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = []
        for ch in text:
            known = self.ids.get(ch)
            if known is not None:
                ids.append(known)
            elif self.byte_fallback:
                # surrogatepass: a lone surrogate (not valid UTF-8, but a Python str may hold
                # one) still round-trips instead of failing the request.
                ids.extend(self.first_byte_id + b for b in ch.encode("utf-8", "surrogatepass"))
            else:
                raise InvalidInput(
                    f"character {ch!r} is outside the model's alphabet", field="prompt"
                )
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; runs of byte tokens are decoded as UTF-8 (an invalid run, which only
        a model can generate, becomes U+FFFD replacement characters)."""
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            if self.byte_fallback and i >= self.first_byte_id:
                pending.append(i - self.first_byte_id)
                continue
            if pending:
                out.append(_text_of_bytes(pending))
                pending.clear()
            tok = self.vocab[i]
            if tok in SPECIALS and skip_special:
                continue
            out.append(tok)
        if pending:
            out.append(_text_of_bytes(pending))
        return "".join(out)

    def token(self, token_id: int) -> str:
        return self.vocab[token_id]


def _text_of_bytes(data: bytearray) -> str:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")
