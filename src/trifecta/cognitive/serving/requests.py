"""What travels through the serving stack: a request's sampling parameters, the tokens it
produces, how it ended, and the sinks that carry those events from a replica's decoding
thread to whoever waits (a blocking caller, an asyncio handler, a Ray replica's stream)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from trifecta.core.ids import unique_id
from trifecta.core.protocols import Generation, TokenAlternative

if TYPE_CHECKING:
    from trifecta.cognitive.serving.codec import TokenCodec

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # run to max_new_tokens (benchmarks; vLLM's parameter of that name)


@dataclass(frozen=True)
class GeneratedToken:
    token_id: int
    text: str  # what it adds to the completion (empty for a special token)
    logprob: float
    entropy: float
    top: tuple[TokenAlternative, ...] = ()  # alternatives by vocabulary name, most likely first
    name: str = ""  # its vocabulary name


@dataclass(frozen=True)
class ReplicaLoad:
    """What the router reads of a replica."""

    name: str
    running: int  # requests in the decoding batch
    waiting: int  # admitted, not yet prefilled
    max_batch: int

    @property
    def in_flight(self) -> int:
        return self.running + self.waiting


@dataclass(frozen=True)
class Completion:
    """How a request ended, and what it consumed."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    replica: str = ""


class RequestSink(Protocol):
    """Receives a request's events, called from the replica's decoding thread: keep it quick."""

    def tokens(self, generated: Sequence[GeneratedToken]) -> None: ...

    def finish(self, completion: Completion) -> None: ...

    def fail(self, error: BaseException) -> None: ...


@dataclass
class EngineRequest:
    prompt_ids: list[int]
    params: SamplingParams
    sink: RequestSink
    request_id: str = field(default_factory=unique_id)  # no system call a request
    capsule: str = ""

    @property
    def cost(self) -> int:
        """Estimated work (prompt + completion tokens): the unit of fair queuing."""
        return len(self.prompt_ids) + self.params.max_new_tokens


class CollectingSink:
    """Gathers a request's tokens; `wait()` blocks until it ends and returns them."""

    def __init__(self) -> None:
        self.generated: list[GeneratedToken] = []
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        self.generated.extend(generated)

    def finish(self, completion: Completion) -> None:
        self.completion = completion
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def finished(self, timeout: float | None = None) -> bool:
        """Whether the request has ended (waiting up to `timeout` seconds for it)."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> tuple[list[GeneratedToken], Completion]:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        assert self.completion is not None
        return self.generated, self.completion

    def to_generation(self, model: str) -> Generation:
        generated, completion = self.wait()
        return Generation(
            text="".join(token.text for token in generated),
            tokens=[token.text for token in generated],
            logprobs=[token.logprob for token in generated],
            entropies=[token.entropy for token in generated],
            finish_reason="length" if completion.finish_reason == "length" else "stop",
            model=model,
            prompt_tokens=completion.prompt_tokens,
            top_logprobs=[list(token.top) for token in generated],
        )


def generate_all(
    submit: Callable[[EngineRequest], None],
    codec: TokenCodec,
    prompts: Sequence[str],
    model: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_logprobs: int,
    stop: Sequence[str],
) -> list[Generation]:
    """The `LanguageModel.generate` of anything that takes `EngineRequest`s (a replica, a
    tier): submit every prompt at once, then collect the generations in order."""
    params = SamplingParams(max_new_tokens, temperature, 1.0, top_logprobs, tuple(stop))
    sinks = []
    for prompt in prompts:
        sink = CollectingSink()
        submit(EngineRequest(codec.encode(prompt), params, sink))
        sinks.append(sink)
    return [sink.to_generation(model) for sink in sinks]


StreamEvent = list[GeneratedToken] | Completion | BaseException


class AsyncStreamSink:
    """Hands a request's events to an asyncio consumer (an HTTP handler), tagged with `key` so
    that one queue can carry the events of several requests (the `n` choices of one call)."""

    def __init__(
        self,
        queue: asyncio.Queue[tuple[int, StreamEvent]],
        key: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        self.loop = loop or asyncio.get_running_loop()
        self.queue = queue
        self.key = key

    def _put(self, event: StreamEvent) -> None:
        # RuntimeError: the consumer's loop has closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.key, event))

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        self._put(list(generated))

    def finish(self, completion: Completion) -> None:
        self._put(completion)

    def fail(self, error: BaseException) -> None:
        self._put(error)
