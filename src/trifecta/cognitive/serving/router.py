"""Which replica serves a request: weighted scorers over a power-of-two-choices sample.

The scheme of the best inference routers (the Gateway API Inference Extension's scheduler,
llm-d's prefix-cache and queue scorers, SGLang's cache-aware router): every candidate gets a
score, a weighted sum of
- prefix affinity: the share of the prompt's leading blocks this replica has seen (its prefix
  cache likely still holds them, so it prefills only the rest);
- queue length: requests admitted to the replica and not yet decoding;
- running batch size: requests decoding there now;
and the best-scoring candidate wins. Candidates are two replicas drawn at random (power of two
choices keeps load even without scanning every replica) plus the replica that matched the
longest prefix.

Hot-prefix protection: the affinity term only counts while the replica holding the prefix is
within `imbalance_threshold` requests of the least loaded candidate. A prefix that floods the
tier spills to the next replica, which then holds it too, so a hot prefix spreads over as many
replicas as its load needs instead of pinning one.

The prefix index is bounded: it remembers at most as many block hashes as the tier's
replicas' prefix caches can hold (`fit_index`), or `router_prefix_hashes` when set. A hash
beyond that names a prefix no replica still holds, so it could only mislead the router.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from trifecta.cognitive.serving.requests import ReplicaLoad
from trifecta.cognitive.settings import get_cognitive_settings
from trifecta.core.heap_report import track

# Before the replicas are known (a router made alone, the Ray router): two engines' caches
# at the default 16,384 tokens in 8-token blocks.
DEFAULT_INDEX_HASHES = 2 * 16_384 // 8


@dataclass(frozen=True)
class RouterWeights:
    prefix: float = 1.0
    queue: float = 1.0
    running: float = 0.5
    imbalance_threshold: int = 4
    sample_size: int = 2  # power of two choices


class PrefixIndex:
    """Which replicas recently routed which prompt-block hashes (least recently used first out)."""

    def __init__(self, capacity: int = DEFAULT_INDEX_HASHES):
        self.capacity = capacity
        self._owners: OrderedDict[int, set[str]] = OrderedDict()
        track("cognitive router prefix index (hashes)", self)

    @property
    def entries(self) -> int:
        return len(self._owners)

    @property
    def bound(self) -> int:
        return self.capacity

    def resize(self, capacity: int) -> None:
        """A new bound; the least recently routed hashes go first if it is smaller."""
        self.capacity = max(1, capacity)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def matched_blocks(self, hashes: Sequence[int], replicas: Sequence[str]) -> dict[str, int]:
        """For each replica, how many leading blocks of the prompt it has seen."""
        matched = dict.fromkeys(replicas, 0)
        alive = set(replicas)
        for depth, block_hash in enumerate(hashes, start=1):
            owners = self._owners.get(block_hash)
            alive &= owners if owners is not None else set()
            if not alive:
                break
            for replica in alive:
                matched[replica] = depth
        return matched

    def record(self, hashes: Sequence[int], replica: str) -> None:
        for block_hash in hashes:
            owners = self._owners.get(block_hash)
            if owners is None:
                owners = self._owners[block_hash] = set()
            owners.add(replica)
            self._owners.move_to_end(block_hash)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget(self, replica: str) -> None:
        """A replica went away: it holds nothing any more."""
        for owners in self._owners.values():
            owners.discard(replica)


class ScoringRouter:
    """Chooses a replica for each request; remembers where prefixes went."""

    def __init__(
        self,
        weights: RouterWeights | None = None,
        *,
        seed: int | None = None,
        index_hashes: int | None = None,
    ):
        self.weights = weights or RouterWeights()
        self._configured = index_hashes or get_cognitive_settings().router_prefix_hashes
        self.index = PrefixIndex(self._configured or DEFAULT_INDEX_HASHES)
        self._random = random.Random(seed)

    def fit_index(self, cached_blocks: int) -> None:
        """Bound the index by the blocks the replicas' prefix caches hold together, unless a
        bound was configured."""
        if self._configured is None:
            self.index.resize(cached_blocks)

    def score(
        self, load: ReplicaLoad, matched: int, total_blocks: int, least_in_flight: int
    ) -> float:
        weights = self.weights
        affinity = matched / total_blocks if total_blocks else 0.0
        if load.in_flight - least_in_flight > weights.imbalance_threshold:
            affinity = 0.0  # hot-prefix protection: an overloaded holder loses its pull
        size = max(load.max_batch, 1)
        return (
            weights.prefix * affinity
            - weights.queue * load.waiting / size
            - weights.running * load.running / size
        )

    def choose(self, hashes: Sequence[int], loads: Sequence[ReplicaLoad]) -> str:
        """The replica for a prompt with block hashes `hashes`, among `loads` (all with room)."""
        if not loads:
            raise ValueError("no replica to choose from")
        names = [load.name for load in loads]
        matched = self.index.matched_blocks(hashes, names)
        sample = self._random.sample(range(len(loads)), min(self.weights.sample_size, len(loads)))
        candidates = {loads[i].name: loads[i] for i in sample}
        best_match = max(names, key=lambda name: matched[name])
        if matched[best_match] > 0:
            candidates[best_match] = next(load for load in loads if load.name == best_match)
        least = min(load.in_flight for load in candidates.values())
        chosen = max(
            candidates.values(),
            key=lambda load: (
                self.score(load, matched[load.name], len(hashes), least),
                self._random.random(),
            ),
        ).name
        self.index.record(hashes, chosen)
        return chosen
