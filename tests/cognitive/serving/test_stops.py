"""Stop strings over a token stream: nothing of a stop string is ever released."""

from __future__ import annotations

from trifecta.cognitive.serving.requests import GeneratedToken
from trifecta.cognitive.serving.stops import StopWatcher


def tokens(*texts: str) -> list[GeneratedToken]:
    return [GeneratedToken(i, text, -1.0, 1.0) for i, text in enumerate(texts)]


def run(watcher: StopWatcher, stream: list[GeneratedToken]) -> str:
    released = []
    for token in stream:
        released += watcher.push(token)
        if watcher.stopped:
            return "".join(t.text for t in released)
    return "".join(t.text for t in released + watcher.flush())


def test_text_is_cut_before_the_stop_string() -> None:
    assert run(StopWatcher(["+1"]), tokens(*"58+17")) == "58"
    assert run(StopWatcher(["?", "17"]), tokens(*"5817?")) == "58"


def test_a_partial_match_is_held_back_then_released() -> None:
    watcher = StopWatcher(["abc"])
    assert [t.text for t in watcher.push(tokens("a")[0])] == []
    assert [t.text for t in watcher.push(tokens("b")[0])] == []
    assert [t.text for t in watcher.push(tokens("x")[0])] == ["a", "b", "x"]
    assert not watcher.stopped


def test_a_token_straddling_the_stop_string_keeps_its_text_before_it() -> None:
    assert run(StopWatcher(["c;"]), tokens("ab", "c;d")) == "ab"
    assert run(StopWatcher(["b;"]), tokens("ab", ";x")) == "a"


def test_without_stop_strings_every_token_passes_at_once() -> None:
    watcher = StopWatcher([])
    assert [t.text for t in watcher.push(tokens("q")[0])] == ["q"]
