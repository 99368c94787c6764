"""One replica: a causal LM decoding many requests at once with continuous batching.

A background thread runs the loop: admit waiting requests into free batch slots (prefilling
them together, starting from any cached prompt prefix), then advance every running request
by one token in a single forward pass. Requests that arrive while the batch decodes join at
the next step; a request that finishes (or is cancelled) leaves at once and frees its slot.

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
from transformers.cache_utils import DynamicCache

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.kv_batch import KV, KVBatch
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
from trifecta.cognitive.serving.step_times import StepTimes
from trifecta.cognitive.serving.stops import StopWatcher
from trifecta.core.errors import Unavailable
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
        self.position = len(request.prompt_ids)  # real tokens in the cache so far
        self.pending = 0  # the token to feed at the next step
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
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self._waiting: deque[EngineRequest] = deque()
        self._cancelled: set[str] = set()
        self._rows: list[_Row] = []
        self._batch: KVBatch | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # forward passes, for tests and metrics
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
                    else:
                        joiners.append(request)
                self._waiting = deque(r for r in self._waiting if not self._drop_if(r, cancelled))
            try:
                with torch.inference_mode():
                    started = time.perf_counter()
                    self._drop_cancelled(cancelled)
                    if joiners:
                        self._prefill(joiners)
                    if self._rows:
                        rows = len(self._rows)
                        self._decode()
                        # The whole iteration: each row's share of joins and leaves included.
                        self.step_times.record(rows, time.perf_counter() - started)
            except Exception as exc:  # a failed forward fails its batch, not the replica
                log.error("decoding step failed", replica=self._name, error=repr(exc))
                for row in self._rows:
                    row.request.sink.fail(exc)
                for request in joiners:
                    if all(row.request is not request for row in self._rows):
                        request.sink.fail(exc)
                self._rows, self._batch = [], None
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

    def _prefill(self, joiners: list[EngineRequest]) -> None:
        rows: list[_Row] = []
        prefixes: list[KV | None] = []
        for request in joiners:
            hashes = block_hashes(request.prompt_ids, self.prefix_cache.block_size)
            kv, cached = self.prefix_cache.lookup(request.prompt_ids, hashes)
            rows.append(_Row(request, hashes, cached))
            prefixes.append(kv)
        suffixes = [row.request.prompt_ids[row.cached_prompt_tokens :] for row in rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.tensor([[0] * (width - len(s)) + s for s in suffixes], dtype=torch.long)
        suffix_mask = torch.tensor(
            [[0] * (width - len(s)) + [1] * len(s) for s in suffixes], dtype=torch.long
        )
        positions = torch.tensor(
            [
                [0] * (width - len(s)) + list(range(row.cached_prompt_tokens, row.position))
                for s, row in zip(suffixes, rows, strict=True)
            ],
            dtype=torch.long,
        )
        past = self._past_for(prefixes, [row.cached_prompt_tokens for row in rows])
        mask = torch.cat([past.mask, suffix_mask], dim=1) if past is not None else suffix_mask
        cache = past.cache if past is not None else DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.steps += 1
        joined = KVBatch(out.past_key_values, mask)
        for index, row in enumerate(rows):
            cacheable = (
                (row.position - 1) // self.prefix_cache.block_size * self.prefix_cache.block_size
            )
            if cacheable > row.cached_prompt_tokens:
                self.prefix_cache.insert(row.hashes, joined.row(index, cacheable), cacheable)
        self._batch = joined if self._batch is None else self._batch.merge(joined)
        self._rows.extend(rows)
        self._advance(rows, choose_next(out.logits[:, -1, :], [row.rule for row in rows]))

    def _past_for(self, prefixes: list[KV | None], lengths: list[int]) -> KVBatch | None:
        """The joiners' cached prefixes as one left-padded batch (None when none was cached)."""
        template = next((kv for kv in prefixes if kv is not None), None)
        if template is None:
            return None
        empty = [(k[:, :, :0], v[:, :, :0]) for k, v in template]
        return KVBatch.stack([kv if kv is not None else empty for kv in prefixes], lengths)

    def _decode(self) -> None:
        assert self._batch is not None
        rows = self._rows
        mask = torch.cat([self._batch.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=torch.tensor([[row.pending] for row in rows], dtype=torch.long),
            attention_mask=mask,
            position_ids=torch.tensor([[row.position] for row in rows], dtype=torch.long),
            past_key_values=self._batch.cache,
            use_cache=True,
        )
        self.steps += 1
        self._batch = KVBatch(out.past_key_values, mask)
        for row in rows:
            row.position += 1
        self._advance(rows, choose_next(out.logits[:, -1, :], [row.rule for row in rows]))

    def _advance(self, rows: list[_Row], choices: list[StepChoice]) -> None:
        """Hand each row its new token, and retire the rows that are done."""
        for row, choice in zip(rows, choices, strict=True):
            row.pending = choice.token_id
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
                    or row.position >= self.context_length  # no room left to feed it back
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
        keep = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
        if len(keep) == len(self._rows):
            return
        for row in self._rows:
            if row.finish_reason is not None:
                self.finished[row.finish_reason] += 1
                row.request.sink.finish(
                    Completion(
                        row.finish_reason,
                        prompt_tokens=len(row.request.prompt_ids),
                        completion_tokens=row.released,
                        cached_prompt_tokens=row.cached_prompt_tokens,
                        replica=self._name,
                    )
                )
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._batch = None
        elif self._batch is not None:
            self._batch = self._batch.keep(keep)
