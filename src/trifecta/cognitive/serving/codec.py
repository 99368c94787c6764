"""Text <-> token ids for the serving engine, over either tokenizer a tier can come with.

The shipped tiers use the project's `CharTokenizer` (one character per token); a real
checkpoint comes with a Hugging Face tokenizer. The engine only needs what this adapter
offers: encode a prompt, the end-of-sequence id, and the text of each generated token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trifecta.core.errors import InvalidInput
from trifecta.core.tokenizer import CharTokenizer


class TokenCodec:
    """Encodes prompts and names tokens for one model's vocabulary."""

    def __init__(self, tokenizer: Any, *, add_bos: bool = True):
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self._char = isinstance(tokenizer, CharTokenizer)
        if self._char:
            self.eos_id: int | None = tokenizer.eos_id
            self.bos_id: int | None = tokenizer.bos_id
            self.vocab_size = tokenizer.vocab_size
        else:
            self.eos_id = tokenizer.eos_token_id
            self.bos_id = tokenizer.bos_token_id
            self.vocab_size = len(tokenizer)
        self._names: dict[int, str] = {}
        self._vocabulary_names: dict[int, str] = {}  # token_name's, read per generated token
        # A fast tokenizer's Rust tokenizer, called directly: what the wrapper's `encode`
        # computes when it neither truncates nor pads (read at each call: the wrapper sets that
        # state per call), without its per-call Python: 101 -> 7 us a prompt on the shipped
        # tiers' tokenizer (medians of 10 alternated rounds of 300 prompts, load 7.6), paid on
        # every tier a request visits (0.8% of the loop's CPU in the profile).
        self._backend: Any = None if self._char else getattr(tokenizer, "backend_tokenizer", None)

    def encode(self, text: str, *, field: str = "prompt") -> list[int]:
        if self._char:
            try:
                ids: list[int] = self.tokenizer.encode(text)
            except InvalidInput as exc:
                raise InvalidInput(exc.message, field=field) from None
        else:
            backend = self._backend
            try:
                if backend is not None and backend.truncation is None and backend.padding is None:
                    ids = list(backend.encode(text, add_special_tokens=False).ids)
                else:
                    ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            except Exception as exc:  # `tokenizers` raises plain Exceptions for unknown characters
                raise InvalidInput(
                    f"the model's tokenizer cannot encode it ({exc})", field=field
                ) from None
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def token_text(self, token_id: int) -> str:
        """The text a generated token contributes (empty for special tokens)."""
        name = self._names.get(token_id)
        if name is None:
            if self._char:
                name = self.tokenizer.decode([token_id])
            else:
                name = self.tokenizer.decode([token_id], skip_special_tokens=True)
            self._names[token_id] = name
        return name

    def token_name(self, token_id: int) -> str:
        """The vocabulary's name for a token (specials keep theirs: `<eos>`), as listed among
        the top alternatives, where an empty string would make specials indistinguishable."""
        name = self._vocabulary_names.get(token_id)
        if name is None:
            if self._char:
                name = str(self.tokenizer.token(token_id))
            else:
                name = str(self.tokenizer.convert_ids_to_tokens(token_id))
            self._vocabulary_names[token_id] = name
        return name

    def decode(self, ids: Sequence[int]) -> str:
        if self._char:
            return str(self.tokenizer.decode(list(ids)))
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
