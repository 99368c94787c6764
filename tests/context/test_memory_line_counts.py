"""A prompt line's token count is off the request path: a bullet's line is counted from its
parts (its counters change at every learned batch, its id and content do not), and the
learning worker counts the lines of the memories it writes, handing them to the serving
process (the learner process sends them with its `Learned` event)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.context.conftest import ServiceFactory
from tests.context.submitter import trajectory
from tests.context.test_learn_queue import seed_bullet
from tests.context.test_render_token_counts import bullets
from trifecta.context import tokens
from trifecta.context.learn_worker import LearnWorker
from trifecta.context.learner import Learned, LearnerConfig
from trifecta.context.learner_process import LearnerProcess
from trifecta.context.models import RetrieveRequest
from trifecta.context.render import bullet_line, bullet_tokens, memory_line


@pytest.fixture
def tokenized(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts the tokenizer is called on from here on (counts start empty)."""
    calls: list[str] = []
    real = tokens._count
    monkeypatch.setattr(tokens, "_counts", None)

    def counted(text: str) -> int:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(tokens, "_count", counted)
    yield calls


def test_a_bullet_line_counts_as_its_whole_line_and_a_new_counter_tokenizes_no_content(
    tokenized: list[str],
) -> None:
    ranked = bullets(random.Random(3), 40)
    for r in ranked:  # odd contents included: accents, CJK, zero-width and odd spaces
        assert bullet_tokens(r.bullet) == tokens._count(bullet_line(r.bullet))
    bullet = ranked[0].bullet
    bullet_tokens(bullet)
    tokenized.clear()
    tagged = bullet.model_copy(update={"helpful": bullet.helpful + 100})
    assert bullet_tokens(tagged) == tokens._count(bullet_line(tagged))
    tokenized.pop()  # the check's own call above
    assert tokenized == [f"{tagged.helpful},"]  # the one new word


def test_the_worker_hands_on_each_memory_line_counted(
    make_service: ServiceFactory, sqlite_url: str, tokenized: list[str]
) -> None:
    """Thread worker: the lines it counted are this process's, so the retrieval that
    renders the new memory tokenizes nothing; they also go to `on_learned`."""
    service = make_service(sqlite_url)
    worker = service.learner
    assert isinstance(worker, LearnWorker)
    sent: list[dict[str, int]] = []
    worker.on_learned = lambda _shard, _domain, _version, lines: sent.append(lines)
    bullet = seed_bullet(service)
    learned = trajectory(1, bullet)
    service.submit(learned)
    assert service.drain(timeout=60)
    lines = {line: n for batch in sent for line, n in batch.items()}
    assert lines and all(n == tokens._count(line) for line, n in lines.items())
    tokenized.clear()
    request = RetrieveRequest(query=learned.prompt, k_memories=3, token_budget=4000)
    retrieval = service.retrieve("twin-a", request)
    assert retrieval.memories and all(memory_line(h) in lines for h in retrieval.memories)
    assert not [t for t in tokenized if t.startswith("- [")]  # no memory line tokenized
    service.close()


def test_the_serving_process_takes_the_learner_process_counts(
    make_service: ServiceFactory, sqlite_url: str, tokenized: list[str]
) -> None:
    """A `Learned` event's lines are remembered before the view shows the batch."""
    service = make_service(sqlite_url)
    config = LearnerConfig(
        control_url=sqlite_url, redis_url="", settings_json="{}", embedder="x:y", parent_pid=1
    )
    supervisor = LearnerProcess(service, config)  # never started: its event handled here
    line = "- [mem-0001] (worked) a line only the learner counted. | Task: 1+1?"
    wrong = 999  # not its count: the serving process takes the learner's word for it
    event = Learned(shard=sqlite_url, domain="plant", version=0, stats={}, lines={line: wrong})
    supervisor._learned(event)
    assert tokens.count_tokens(line) == wrong and tokenized == []
    service.close()
