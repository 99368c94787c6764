"""The character tokenizer of the shipped models (cognitive tiers, edge model, generative).

One id per character of the task family's alphabet plus four specials. Pure Python, so the
torch-free edge runtime uses it too; the cognitive layer exports the same vocabulary as a
Hugging Face `tokenizer.json` so its tiers load through `transformers` like any checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import ALPHABET

PAD, BOS, EOS, MASK = "<pad>", "<bos>", "<eos>", "<mask>"
SPECIALS = (PAD, BOS, EOS, MASK)


class CharTokenizer:
    """Characters of `ALPHABET` <-> ids; ids 0-3 are PAD, BOS, EOS, MASK."""

    def __init__(self, alphabet: str = ALPHABET):
        self.vocab: list[str] = [*SPECIALS, *alphabet]
        self.ids: dict[str, int] = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = range(4)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = [self.ids[ch] for ch in text]
        except KeyError as exc:
            raise InvalidInput(
                f"character {exc.args[0]!r} is outside the model's alphabet", field="prompt"
            ) from None
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        out = []
        for i in ids:
            tok = self.vocab[i]
            if tok in SPECIALS and skip_special:
                continue
            out.append(tok)
        return "".join(out)

    def token(self, token_id: int) -> str:
        return self.vocab[token_id]
