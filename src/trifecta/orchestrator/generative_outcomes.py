"""Outcome feedback to the generative layer's router, through the context layer (ReasoningBank).

The loop does not hand its verdict to the generative tuner. A generative answer's trajectory
goes to the context layer like every other request's, with the experts the answer used in its
verdict detail, so the memory the context layer distils from it records the outcome and the
experts together. The tuner reads them back from there (`settle`: a typed `MemoryQuery`
through the context protocol) and applies the generative layer's outcome rule once per outcome
a memory records: experts used on verified successes gain, on failures lose.

ReasoningBank folds a near-identical outcome into the memory already stored (same outcome,
cosine above the context layer's threshold) and counts it in `reinforced`. Such a repeat is
applied too, with the expert usage of the memory it was folded into: its sign is right (the
outcomes are equal) and its experts are those of a near-identical answer. A client's later
verdict is a trajectory of its own, so it tunes the router the same way. Memories are read
from the capsule's domain, which its capsules share.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict

from trifecta.context.models import MemoryItem, MemoryQuery
from trifecta.core.logging import get_logger
from trifecta.federation.services import ContextClient, GenerativeClient, GenerativeFeedback

log = get_logger("trifecta.orchestrator.generative_outcomes")
# The title the context layer gives a generative answer's memory: "<kind> solved via
# generative/<model>" (or "failed via"). The query ranks those first among the domain's.
MEMORY_QUERY = "solved via generative"
ROUTE_MARK = "via generative/"
QUERY_K = 100  # MemoryQuery's most: near-identical outcomes are folded, so few are distinct
MAX_PENDING = 10_000  # answers whose trajectory is not written yet (learning off: never)
# Outcomes applied per (capsule, memory id), for every loop of the process (the serve app and
# a run may share a stack). Not persisted: at start, the memories already stored count as
# applied; several processes serving one capsule would each apply an outcome.
_APPLIED: dict[tuple[str, str], int] = {}
_APPLIED_LOCK = threading.Lock()
_STARTED_AT = time.time()
USAGE = re.compile(r"tokens per expert, (layer \d+: [\d,]+(?:; layer \d+: [\d,]+)*)")


def usage_text(expert_load: list[list[int]]) -> str:
    """How a memory records the experts an answer used (parsed back by `usage_of`)."""
    layers = "; ".join(f"layer {i}: " + ",".join(map(str, r)) for i, r in enumerate(expert_load))
    return f"tokens per expert, {layers}"


def usage_of(memory: MemoryItem) -> list[list[int]] | None:
    found = USAGE.search(memory.content)
    if found is None:
        return None
    return [[int(v) for v in part.split(": ")[1].split(",")] for part in found[1].split("; ")]


class GenerativeOutcomes:
    """Between a generative answer and its tuning: its expert usage until its trajectory is
    written, then the outcomes each memory of the capsule's domain records, applied once."""

    def __init__(self, max_pending: int = MAX_PENDING):
        self.max_pending = max_pending
        self._usage: OrderedDict[str, list[list[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, request_id: str, expert_load: list[list[int]]) -> None:
        with self._lock:
            self._usage[request_id] = expert_load
            while len(self._usage) > self.max_pending:
                self._usage.popitem(last=False)

    def detail(self, request_id: str, expected: str | None, verdict: bool | None) -> str | None:
        """The verdict detail of a generative answer's trajectory (None for other requests):
        the experts it used, after what was expected when it was wrong."""
        with self._lock:
            usage = self._usage.pop(request_id, None)
        if usage is None:
            return None
        wrong = f"expected {expected}; " if verdict is False and expected is not None else ""
        return wrong + usage_text(usage)

    def settle(self, capsule_id: str, context: ContextClient, generative: GenerativeClient) -> int:
        """Apply every outcome the capsule's domain recorded and no loop of this process has
        applied yet; returns how many were applied."""
        found = context.search_memories(capsule_id, MemoryQuery(query=MEMORY_QUERY, k=QUERY_K))
        applied = 0
        for hit in found.hits:
            memory = hit.memory
            if ROUTE_MARK not in memory.title:
                continue
            usage = usage_of(memory)
            outcomes = memory.reinforced + 1
            key = (capsule_id, memory.id)
            with _APPLIED_LOCK:
                if key not in _APPLIED and memory.created_at < _STARTED_AT:
                    _APPLIED[key] = outcomes  # recorded before this process: applied then
                new = outcomes - _APPLIED.get(key, 0)
                _APPLIED[key] = outcomes
            if new <= 0:
                continue
            if usage is None:
                log.info("generative outcome without expert usage", memory=memory.id)
                continue
            for _ in range(new):
                generative.feedback(
                    GenerativeFeedback(
                        capsule_id=capsule_id,
                        expert_load=usage,
                        success=memory.outcome == "success",
                    )
                )
            applied += new
        return applied
