"""The serving side of the learner process: start it, feed it, hear from it, restart it.

`LearnerProcess` has the `LearnWorker`'s control surface (`start`, `notify`, `drain`, `stop`,
`stats`), so `ContextService` uses either. It starts `python -m trifecta.context.learner`
(`learner.py`) on the first submit, drain, `start_learning` or warm-up, and a supervisor
thread reads the child's events:

- `Learned` (a batch of a domain committed): the version goes to the version board (what a
  thread worker's publish did in this process; a forward-only publish, so the child's own
  publish and this one agree), and the domain's live view, if this process holds one, reads
  the rows newer than the version it holds (`ViewCache.refresh`: an incremental read, never
  a reload), so the next request finds its standing searches already updated;
- `Drained`: answers the `drain` that asked. The child sends every `Learned` of a drain's
  batches before its `Drained`, and they are handled in order, so when `drain` returns this
  process's views and board already show what was learned.

If the child dies (kill -9, an out-of-memory kill, a crash), the supervisor starts another
after a pause (doubling up to `MAX_BACKOFF_S` while it keeps dying young) and tells it every
shard it knows; the new child learns every row still pending, so nothing acknowledged is
lost (a batch the dead child was writing committed whole or not at all), and a `drain` that
was waiting is asked again of the new child. `stop` closes the child's stdin (it finishes
its batch and exits) and kills it if it does not exit in time; the child exits by itself if
this process dies (`learner.py`), so neither side leaves an orphan.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

from pydantic import ValidationError

from trifecta.context.learner import (
    EVENTS,
    Drain,
    Drained,
    Learned,
    LearnerConfig,
    Ready,
    Watch,
    import_path,
)
from trifecta.context.settings import ContextSettings
from trifecta.context.tokens import remember_count
from trifecta.core.logging import get_logger
from trifecta.core.settings import get_settings

if TYPE_CHECKING:
    from trifecta.context.facade import ContextService

log = get_logger(__name__)
MAX_BACKOFF_S = 10.0
YOUNG_S = 30.0  # a child that died younger than this makes the next pause longer
STOP_S = 15.0  # how long `stop` waits for the child to finish its batch


def learner_config(
    *,
    settings: ContextSettings,
    control_url: str,
    redis_url: str | None,
    embedder: object,
    language_model: object,
) -> LearnerConfig | None:
    """The child's configuration, or None when learning must stay in this process: the
    setting says so, or a part the learning needs lives only here (a language model, or an
    embedder handed in as an object: the child could not compute the same vectors)."""
    if not settings.learning_process:
        return None
    reason = None
    path = import_path(embedder)
    if language_model is not None:
        reason = "a language model was handed in"
    elif path is None:
        reason = "the embedder was handed in as an object, not a class or factory"
    if reason is not None or path is None:
        log.debug("learning in a thread of this process", reason=reason)
        return None
    core = get_settings()
    return LearnerConfig(
        log_level=core.log_level,
        log_format=core.log_format,
        control_url=control_url,
        redis_url=redis_url or "",
        settings_json=settings.model_dump_json(),
        embedder=path,
        parent_pid=os.getpid(),
    )


class LearnerProcess:
    def __init__(self, service: ContextService, config: LearnerConfig):
        self.service = service
        self.config = config
        self._lock = threading.Lock()  # guards the child, the watched shards and the drains
        self._child: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        self._shards: set[str] = set()
        self._woken: dict[str, float] = {}  # shard -> monotonic time of the last Watch sent
        self._ids = itertools.count(1)
        self._drains: dict[int, Drain] = {}  # asked and not answered: re-asked of a new child
        self._answers: dict[int, bool] = {}
        self._answered = threading.Condition(self._lock)
        self._stats: dict[str, int] = {}
        self.starts = 0
        self.restarts = 0

    # -- the worker's surface ----------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._supervisor is not None and self._supervisor.is_alive():
                return
            self._closing.clear()
            self._shards.add(self.service.router.default_url)
            self._supervisor = threading.Thread(
                target=self._supervise, name="context-learner-supervisor", daemon=True
            )
            self._supervisor.start()

    def notify(self, shard_url: str) -> None:
        """A row was queued on this shard: the child looks there now. A woken worker waits
        `learn_linger_s` before it reads the queue, so a row committed within that time of
        the last wake is read anyway: no second wake is sent for it (a line a request
        would cost, and a pipe that could fill while the child starts)."""
        self.start()
        now = time.monotonic()
        with self._lock:
            self._shards.add(shard_url)
            if now - self._woken.get(shard_url, -1e9) < self.service.settings.learn_linger_s:
                return
            self._woken[shard_url] = now
            self._send(Watch(urls=[shard_url]))

    def drain(self, timeout: float) -> bool:
        """Wait until the child found no pending row on any shard it knows, and this
        process has applied what it learned; False if `timeout` passed first."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._lock:
            command = Drain(id=next(self._ids), timeout_s=timeout)
            self._drains[command.id] = command
            self._send(command)
            while command.id not in self._answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._drains.pop(command.id, None)
                    return False
                self._answered.wait(remaining)
            self._drains.pop(command.id, None)
            return self._answers.pop(command.id)

    def stop(self, timeout: float = STOP_S) -> None:
        self._closing.set()
        with self._lock:
            child = self._child
            supervisor = self._supervisor
        if child is not None:
            _close_quietly(child.stdin)  # end of file: the child finishes its batch and exits
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("learner did not stop in time; killing it", pid=child.pid)
                child.kill()
                child.wait()
        if supervisor is not None:
            supervisor.join(timeout)
        with self._lock:
            self._supervisor = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return self._stats | {"learner_starts": self.starts, "learner_restarts": self.restarts}

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before it starts or while it restarts)."""
        with self._lock:
            return self._child.pid if self._child is not None else None

    # -- the supervisor ----------------------------------------------------------------
    def _supervise(self) -> None:
        pause = 0.25
        while not self._closing.is_set():
            started = time.monotonic()
            try:
                child = self._spawn()
            except OSError as exc:
                log.error("learner process did not start", error=str(exc))
            else:
                assert child.stdout is not None
                self._read(child.stdout)
                code = child.wait()
                with self._lock:
                    self._child = None
                if self._closing.is_set():
                    return
                log.warning("learner process died; restarting it", pid=child.pid, code=code)
                self.restarts += 1
            pause = pause * 2 if time.monotonic() - started < YOUNG_S else 0.25
            pause = min(pause, MAX_BACKOFF_S)
            self._closing.wait(pause)

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "trifecta.context.learner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
        )
        with self._lock:
            self._child = child
            self.starts += 1
            self._woken.clear()
            if self._closing.is_set():  # `stop` ran while this child was starting
                _close_quietly(child.stdin)
                return child
            self._write(self.config.model_dump_json())
            self._send(Watch(urls=sorted(self._shards)))
            for command in self._drains.values():  # asked of a child that died: ask again
                self._send(command)
        return child

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                event = EVENTS.validate_json(line)
            except ValidationError as exc:
                log.warning("learner sent an unreadable line", error=str(exc))
                continue
            if isinstance(event, Learned):
                self._learned(event)
            elif isinstance(event, Drained):
                with self._lock:
                    self._stats = event.stats
                    if event.id in self._drains:
                        self._answers[event.id] = event.ok
                        self._answered.notify_all()
            elif isinstance(event, Ready):
                log.debug("learner process ready", pid=event.pid)

    def _learned(self, event: Learned) -> None:
        """The child committed a batch: publish the version here too and bring this
        process's view of the domain up to it by reading only the newer rows. The token
        counts of the batch's memory lines are taken first, so a request that finds a new
        memory in the view renders it without tokenizing its line (about 80 us each)."""
        service = self.service
        with self._lock:
            self._stats = event.stats
            self._shards.add(event.shard)
        for line, tokens in event.lines.items():
            remember_count(line, tokens)
        service.versions.publish(event.domain, event.version)
        if not service.cache_enabled:
            return
        try:
            store = service.router.store(event.shard)
            service.views.refresh(event.domain, store, event.version)
            service.refresh_hot(event.domain, event.version)
        except Exception as exc:  # the next read of the domain catches up instead
            log.warning("view not refreshed after learning", domain=event.domain, error=str(exc))

    # -- the pipe ----------------------------------------------------------------------
    def _send(self, command: Watch | Drain) -> None:
        """Under the lock. A child that is not running (starting, or dead and about to be
        restarted) gets the shards and the open drains when it starts."""
        self._write(command.model_dump_json())

    def _write(self, line: str) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        # A dying child (the supervisor restarts it) or a closed pipe (stopping): no-op.
        with contextlib.suppress(ValueError, OSError):
            child.stdin.write(line.encode() + b"\n")
            child.stdin.flush()


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    with contextlib.suppress(OSError):
        stream.close()
