"""One replica: a causal LM decoding many requests at once with continuous batching.

A background thread runs the loop (iteration-level scheduling, as Orca and vLLM do): admit
waiting requests into free slots of the preallocated cache (copying in any cached prompt
prefix), then run one forward pass that feeds every running request its last token and every
newcomer the rest of its prompt (`slot_forward.py`). Requests that arrive while the batch
decodes join at the next step, without touching the others' caches; a request that finishes
(or is cancelled) leaves at once and frees its slot. The thread waits only when no request is
running or queued.

Written here rather than taken from `transformers`' ContinuousBatchingManager because that
one reports only the chosen token's log-probability, while the OpenAI API's `top_logprobs`
and the escalation policy's entropy need each step's whole distribution.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import torch

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.prefix_cache import PrefixKVCache, block_hashes
from trifecta.cognitive.serving.requests import (
    Completion,
    EngineRequest,
    FinishReason,
    GeneratedToken,
    ReplicaLoad,
    generate_all,
)
from trifecta.cognitive.serving.sampling import RowSampling, StepChoice, choose_next
from trifecta.cognitive.serving.slot_forward import SlotForward, StepRows
from trifecta.cognitive.serving.step_times import StepTimes
from trifecta.cognitive.serving.stops import StopWatcher
from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.core.logging import get_logger
from trifecta.core.protocols import Generation, TokenAlternative

log = get_logger(__name__)
_seeds = itertools.count(1)
_live: weakref.WeakSet[BatchingEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    # A decoding thread still alive while the interpreter tears torch down can abort the
    # process; stop every engine first.
    for engine in list(_live):
        engine.close()


class _Row:
    """One request's place in the running batch."""

    def __init__(self, request: EngineRequest, hashes: list[int], cached: int):
        self.request = request
        self.hashes = hashes
        self.cached_prompt_tokens = cached
        self.cached = cached  # positions held in its slot of the cache
        self.feed: list[int] = []  # tokens to feed at the next step (the prompt, then one)
        self.generated = 0  # decoding steps, the end token included
        # Tokens handed to the client: the completion's token count (usage), which lists no
        # end token and no stop string, as `logprobs.tokens` does not.
        self.released = 0
        self.stops = StopWatcher(request.params.stop)
        params = request.params
        generator = None
        if params.temperature > 0:
            generator = torch.Generator().manual_seed(
                params.seed if params.seed is not None else next(_seeds)
            )
        self.rule = RowSampling(params.temperature, params.top_p, params.top_logprobs, generator)
        self.finish_reason: FinishReason | None = None


class BatchingEngine:
    """A replica of one model; thread-safe `submit` / `cancel`; also a `LanguageModel`."""

    def __init__(
        self,
        model: Any,
        codec: TokenCodec,
        *,
        name: str,
        max_batch: int = 16,
        prefix_cache: PrefixKVCache | None = None,
    ):
        self.model = model.eval()
        self.codec = codec
        self._name = name
        self.max_batch = max_batch
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixKVCache()
        self._forward = SlotForward(self.model, max_batch)
        self._forward.check_agrees()
        self.context_length = self._forward.context_length
        self._waiting: deque[EngineRequest] = deque()
        self._cancelled: set[str] = set()
        self._rows: list[_Row] = []  # row i decodes in slot i of the cache
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # forward passes, for tests and metrics
        self.rows_stepped = 0  # rows over those passes: steps / rows is the batch fill
        self.step_times = StepTimes(max_batch)  # decode-step durations by batch size
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()
        _live.add(self)

    # ---- the API -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def submit(self, request: EngineRequest) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable(f"replica {self._name} is shut down")
            self._waiting.append(request)
            self._cond.notify()

    def cancel(self, request_id: str) -> None:
        """Stop a request (a client went away); its slot frees at the next step."""
        with self._cond:
            self._cancelled.add(request_id)
            self._cond.notify()

    def latency_batch(self, budget: float) -> int:
        """Rows this replica decodes within `1 + budget` of a one-row step (measured)."""
        return self.step_times.latency_batch(budget)

    def load(self) -> ReplicaLoad:
        with self._cond:
            return ReplicaLoad(self._name, len(self._rows), len(self._waiting), self.max_batch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        return generate_all(
            self.submit,
            self.codec,
            prompts,
            self._name,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            stop=stop,
        )

    # ---- the decoding loop ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._closed:
                    break
                cancelled, self._cancelled = self._cancelled, set()
                joiners: list[EngineRequest] = []
                while self._waiting and len(self._rows) + len(joiners) < self.max_batch:
                    request = self._waiting.popleft()
                    if request.request_id in cancelled:
                        self._finish_unstarted(request)
                    elif self._fits(request):
                        joiners.append(request)
                if cancelled and self._waiting:
                    self._waiting = deque(
                        r for r in self._waiting if not self._drop_if(r, cancelled)
                    )
            try:
                with torch.inference_mode():
                    # This thread's CPU time, not wall time: a wall-clock step also counts the
                    # time the thread waited for a core or the GIL, which does not grow with the
                    # batch (on a shared machine it fitted a negative slope per row, claiming the
                    # whole batch as latency slots).
                    started = time.thread_time()
                    self._drop_cancelled(cancelled)
                    joined = self._admit(joiners)
                    if self._rows:
                        rows = len(self._rows)
                        self._step(joined)
                        # The whole iteration: each row's share of joins and leaves included.
                        self.step_times.record(rows, time.thread_time() - started)
            except Exception as exc:  # a failed forward fails its batch, not the replica
                log.error("decoding step failed", replica=self._name, error=repr(exc))
                for row in self._rows:
                    row.request.sink.fail(exc)
                for request in joiners:
                    if all(row.request is not request for row in self._rows):
                        request.sink.fail(exc)
                self._rows = []
        for row in self._rows:
            row.request.sink.fail(Unavailable(f"replica {self._name} is shut down"))
        for request in self._waiting:
            request.sink.fail(Unavailable(f"replica {self._name} is shut down"))

    def _drop_if(self, request: EngineRequest, cancelled: set[str]) -> bool:
        if request.request_id in cancelled:
            self._finish_unstarted(request)
            return True
        return False

    def _finish_unstarted(self, request: EngineRequest) -> None:
        self.finished["cancelled"] += 1
        request.sink.finish(Completion("cancelled", len(request.prompt_ids), 0, replica=self._name))

    def _drop_cancelled(self, cancelled: set[str]) -> None:
        if not cancelled:
            return
        for row in self._rows:
            if row.request.request_id in cancelled:
                row.finish_reason = "cancelled"
        self._remove_finished()

    def _fits(self, request: EngineRequest) -> bool:
        """Whether the prompt fits a slot; if not, the request fails alone (not its batch)."""
        if 0 < len(request.prompt_ids) <= self.context_length:
            return True
        self.finished["refused"] += 1
        request.sink.fail(
            InvalidInput(
                f"a prompt of {len(request.prompt_ids)} tokens does not fit a context of "
                f"{self.context_length}",
                field="prompt",
            )
        )
        return False

    def _admit(self, joiners: list[EngineRequest]) -> list[_Row]:
        """Give each joiner the next free slot, with any cached prefix of its prompt copied in."""
        rows = []
        for request in joiners:
            hashes = block_hashes(request.prompt_ids, self.prefix_cache.block_size)
            kv, cached = self.prefix_cache.lookup(request.prompt_ids, hashes)
            if kv is not None:
                self._forward.cache.load(len(self._rows), kv)
            row = _Row(request, hashes, cached)
            row.feed = request.prompt_ids[cached:]
            self._rows.append(row)
            rows.append(row)
        return rows

    def _step(self, joined: list[_Row]) -> None:
        """One forward pass: each running row's last token and each joiner's prompt."""
        rows = self._rows
        logits = self._forward.step(StepRows([r.cached for r in rows], [r.feed for r in rows]))
        self.steps += 1
        self.rows_stepped += len(rows)
        block = self.prefix_cache.block_size
        for row in rows:
            row.cached += len(row.feed)
        for row in joined:
            # The prompt's full blocks, less its last token (a hit must leave one to feed).
            cacheable = (row.cached - 1) // block * block
            if cacheable > row.cached_prompt_tokens:
                prefix = self._forward.cache.read(self._rows.index(row), cacheable)
                self.prefix_cache.insert(row.hashes, prefix, cacheable)
        self._advance(list(rows), choose_next(logits, [row.rule for row in rows]))

    def _advance(self, rows: list[_Row], choices: list[StepChoice]) -> None:
        """Hand each row its new token, and retire the rows that are done."""
        for row, choice in zip(rows, choices, strict=True):
            row.feed = [choice.token_id]
            row.generated += 1
            released: list[GeneratedToken] = []
            if choice.token_id == self.codec.eos_id and not row.request.params.ignore_eos:
                row.finish_reason = "stop"
                released = row.stops.flush()
            else:
                released = row.stops.push(self._token(choice))
                if row.stops.stopped:
                    row.finish_reason = "stop"
                elif (
                    row.generated >= row.request.params.max_new_tokens
                    or row.cached >= self.context_length  # no room left to feed it back
                ):
                    row.finish_reason = "length"
                    released += row.stops.flush()
            if released:
                row.released += len(released)
                row.request.sink.tokens(released)
        self._remove_finished()

    def _token(self, choice: StepChoice) -> GeneratedToken:
        codec = self.codec
        top = tuple(TokenAlternative(codec.token_name(i), lp) for i, lp in choice.top)
        return GeneratedToken(
            choice.token_id,
            codec.token_text(choice.token_id),
            choice.logprob,
            choice.entropy,
            top,
            codec.token_name(choice.token_id),
        )

    def _remove_finished(self) -> None:
        """End the finished rows; the last rows move into their slots (one row copied each)."""
        for slot in range(len(self._rows) - 1, -1, -1):
            row = self._rows[slot]
            if row.finish_reason is None:
                continue
            self.finished[row.finish_reason] += 1
            last = self._rows.pop()
            if last is not row:
                self._forward.cache.move(len(self._rows), slot, last.cached)
                self._rows[slot] = last
            row.request.sink.finish(
                Completion(
                    row.finish_reason,
                    prompt_tokens=len(row.request.prompt_ids),
                    completion_tokens=row.released,
                    cached_prompt_tokens=row.cached_prompt_tokens,
                    replica=self._name,
                )
            )
