"""The learning worker in an OS process of its own: `python -m trifecta.context.learner`.

A serving process (`ContextService` with `learning_process` on) starts one such process and
supervises it (`learner_process.py`). The child runs an ordinary `ContextService` over the
same control database, shards and Redis, with the in-thread `LearnWorker`, so it learns
exactly as that worker does (queue order per domain, a row marked done in the transaction
that writes its learning, recovery of every pending row on start). What the process changes
is where the CPU goes: the roles, the MiniLM embeddings and the learning SQL no longer share
the serving process's interpreter lock with the request path.

The two talk over pipes, one JSON line a message (the models below):

- the parent writes a `LearnerConfig` first, then commands on the child's stdin: `Watch`
  (rows were queued on these shards: look there now) and `Drain` (answer when no known
  shard has a pending row);
- the child answers on what was its stdout (`Ready`, `Learned` after each committed batch,
  `Drained`); anything else it prints goes to stderr, so stray output cannot break a line.

The child sets up its heap as `trifecta serve` does (`core/heap.py`): two glibc arenas and the
native caches' bounds before anything allocates, the start-up heap frozen and glibc's heap
trimmed every 10 s once the service is built, and the heap reports of `core/heap_report.py`
(`<file>.learner`) when asked. Without them it grew about 11 MB per 1,000 tasks in a soak.

The child lives only as long as its parent: end of file on stdin (the parent closed it, or
died, kill -9 included: the kernel closes its end) stops the worker and ends the process,
and a watchdog ends it too if its parent process changes (re-parented after a death whose
pipe some other process still holds open).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from typing import Annotated, Literal, TextIO

from pydantic import BaseModel, Field, TypeAdapter

from trifecta.core.logging import configure_logging, get_logger
from trifecta.core.protocols import Embedder

log = get_logger(__name__)
WATCHDOG_S = 0.5  # how often the child checks that its parent is alive


class LearnerConfig(BaseModel):
    """What the child needs to build its service: every part by value or by import path."""

    control_url: str
    redis_url: str = Field(description="empty: no Redis")
    settings_json: str = Field(description="the parent's ContextSettings, as JSON")
    embedder: str = Field(description="module:name of an Embedder class or factory")
    parent_pid: int
    torch_threads: int = Field(default=1, ge=1)
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"


class Watch(BaseModel):
    kind: Literal["watch"] = "watch"
    urls: list[str]


class Drain(BaseModel):
    kind: Literal["drain"] = "drain"
    id: int
    timeout_s: float


class Ready(BaseModel):
    kind: Literal["ready"] = "ready"
    pid: int


class Learned(BaseModel):
    """A batch of `domain` committed on `shard`; the domain is at `version` or later."""

    kind: Literal["learned"] = "learned"
    shard: str
    domain: str
    version: int
    stats: dict[str, int]
    lines: dict[str, int] = Field(
        default_factory=dict,
        description="the prompt lines of the batch's memories and their token counts",
    )


class Drained(BaseModel):
    kind: Literal["drained"] = "drained"
    id: int
    ok: bool
    stats: dict[str, int]


Command = Annotated[Watch | Drain, Field(discriminator="kind")]
Event = Annotated[Ready | Learned | Drained, Field(discriminator="kind")]
COMMANDS: TypeAdapter[Watch | Drain] = TypeAdapter(Command)
EVENTS: TypeAdapter[Ready | Learned | Drained] = TypeAdapter(Event)


def import_path(factory: object) -> str | None:
    """`module:name` for a class or function another process can import, else None (an
    instance, a lambda, a closure)."""
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str) or "<" in name:
        return None
    if not (isinstance(factory, type) or callable(factory)) or module == "__main__":
        return None
    return f"{module}:{name}"


def load_factory(path: str) -> object:
    module, _, name = path.partition(":")
    found: object = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


class _Outbox:
    """The child's event pipe: whole lines, one writer at a time."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, event: Ready | Learned | Drained) -> None:
        line = event.model_dump_json() + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


def _watch_parent(parent_pid: int) -> None:
    """End the process if it was re-parented (its parent died)."""
    while True:
        time.sleep(WATCHDOG_S)
        if os.getppid() != parent_pid:
            log.warning("learner's parent is gone; exiting", parent=parent_pid)
            os._exit(0)


def serve(config: LearnerConfig, commands: TextIO, outbox: _Outbox) -> None:
    """Build the service, learn, and answer commands until end of file on `commands`."""
    import torch

    from trifecta.context.facade import ContextService
    from trifecta.context.learn_worker import LearnWorker
    from trifecta.context.settings import ContextSettings

    torch.set_num_threads(config.torch_threads)  # the serving process keeps the other cores
    settings = ContextSettings.model_validate_json(config.settings_json).model_copy(
        update={"learning_process": False}  # this process is the learner
    )
    factory = load_factory(config.embedder)
    if not callable(factory):
        raise TypeError(f"{config.embedder} is not an embedder class or factory")
    service = ContextService(
        control_url=config.control_url,
        redis_url=config.redis_url,
        settings=settings,
        learning_embedder=lambda: _embedder(factory),
    )
    worker = service.learner
    assert isinstance(worker, LearnWorker)

    def learned(shard: str, domain: str, version: int, lines: dict[str, int]) -> None:
        outbox.send(
            Learned(shard=shard, domain=domain, version=version, stats=worker.stats(), lines=lines)
        )

    worker.on_learned = learned
    worker.start()
    _serve_heap()
    outbox.send(Ready(pid=os.getpid()))

    def drain(command: Drain) -> None:
        ok = worker.drain(command.timeout_s)
        outbox.send(Drained(id=command.id, ok=ok, stats=worker.stats()))

    try:
        for line in commands:
            command = COMMANDS.validate_json(line)
            if isinstance(command, Watch):
                for url in command.urls:
                    worker.notify(url)
            else:  # a drain waits on its own thread: watches keep arriving meanwhile
                threading.Thread(target=drain, args=(command,), daemon=True).start()
    finally:
        worker.stop()  # a batch in flight commits or rolls back whole; the rest stays queued
        service.close()


def _start_heap() -> None:
    """Before anything allocates: what `trifecta serve` does first (core/heap.py says why)."""
    from trifecta.core.heap import bound_native_caches, cap_malloc_arenas

    cap_malloc_arenas()
    bound_native_caches()  # inherited from a server that set them; set here when run alone


def _serve_heap() -> None:
    """Once the service is built: freeze what start-up made, trim glibc's heap while
    learning, and the heap reports when asked (core/heap_report.py)."""
    from trifecta.core.heap import freeze_startup_heap, start_malloc_trimmer
    from trifecta.core.heap_report import start_heap_report_if_asked

    freeze_startup_heap()
    start_malloc_trimmer()
    start_heap_report_if_asked(role="learner")


def _embedder(factory: object) -> Embedder:
    assert callable(factory)
    made = factory()
    if not isinstance(made, Embedder):
        raise TypeError(f"{factory!r} did not make an Embedder")
    return made


def main() -> None:
    _start_heap()
    # The event pipe is the stdout we were given; print() and stray writes go to stderr.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    config = LearnerConfig.model_validate_json(sys.stdin.readline())
    configure_logging(config.log_level, config.log_format)  # to stderr, as the parent's
    threading.Thread(
        target=_watch_parent, args=(config.parent_pid,), name="learner-watchdog", daemon=True
    ).start()
    serve(config, sys.stdin, _Outbox(events))
    events.close()
    os._exit(0)  # no interpreter teardown: torch's threads can hold it up


if __name__ == "__main__":
    main()
