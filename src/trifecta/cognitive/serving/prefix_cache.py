"""Prompt prefixes: block hashes (shared by the router) and a replica's cache of prefix KV.

A prompt is cut into blocks of `block_size` tokens; block i's hash chains the hashes of the
blocks before it, so equal hashes mean equal prefixes (the scheme of vLLM's automatic prefix
caching and of llm-d's prefix-cache scorer). The router remembers which replica saw which
hashes; a replica keeps the keys/values of recent prefixes and prefills only the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from trifecta.cognitive.serving.slot_cache import KV

DEFAULT_BLOCK_SIZE = 8


def block_hashes(ids: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE) -> list[int]:
    """Chain hashes of the leading full blocks: entry i stands for `ids[: (i + 1) * block_size]`.

    Integer tuples hash the same in every process, so the router and the replicas agree."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        previous = hash((previous, tuple(ids[start : start + block_size])))
        hashes.append(previous)
    return hashes


@dataclass
class _Entry:
    kv: KV
    length: int
    keys: list[int] = field(default_factory=list)


class PrefixKVCache:
    """Least-recently-used keys/values of prompt prefixes, bounded in tokens."""

    def __init__(self, capacity_tokens: int = 16_384, block_size: int = DEFAULT_BLOCK_SIZE):
        self.capacity_tokens = capacity_tokens
        self.block_size = block_size
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by the hash of their full length
        self._index: dict[int, tuple[int, int]] = {}  # any block hash -> (entry key, prefix length)
        self._tokens = 0
        self.hits = 0
        self.lookups = 0

    def lookup(self, ids: Sequence[int], hashes: Sequence[int]) -> tuple[KV | None, int]:
        """The longest cached prefix of `ids` that leaves at least one token to prefill."""
        self.lookups += 1
        usable = (len(ids) - 1) // self.block_size
        for blocks in range(min(usable, len(hashes)), 0, -1):
            found = self._index.get(hashes[blocks - 1])
            if found is None:
                continue
            entry_key, length = found
            entry = self._entries[entry_key]
            self._entries.move_to_end(entry_key)
            self.hits += 1
            return [plane[:, :length] for plane in entry.kv], length
        return None, 0

    def insert(self, hashes: Sequence[int], kv: KV, length: int) -> None:
        """Remember `kv`, a prompt's first `length` positions (its block hashes: `hashes`)."""
        blocks = length // self.block_size
        if blocks == 0 or hashes[blocks - 1] in self._entries:
            return
        key = hashes[blocks - 1]
        size = blocks * self.block_size
        entry = _Entry([plane[:, :size] for plane in kv], size)
        for index in range(blocks):
            if hashes[index] not in self._index:
                self._index[hashes[index]] = (key, (index + 1) * self.block_size)
                entry.keys.append(hashes[index])
        self._entries[key] = entry
        self._tokens += size
        while self._tokens > self.capacity_tokens and len(self._entries) > 1:
            self._evict()

    def _evict(self) -> None:
        _key, entry = self._entries.popitem(last=False)
        self._tokens -= entry.length
        for block_hash in entry.keys:
            self._index.pop(block_hash, None)

    @property
    def tokens(self) -> int:
        return self._tokens
