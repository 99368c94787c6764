"""Stop strings over a token stream: release a token only once it cannot be part of a stop
string, and cut the text where one appears (the OpenAI API's `stop` semantics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from trifecta.cognitive.serving.requests import GeneratedToken


class StopWatcher:
    """Feeds on generated tokens; says which may be released and whether a stop string hit."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held: list[GeneratedToken] = []
        self._held_text = ""
        self.stopped = False

    def push(self, token: GeneratedToken) -> list[GeneratedToken]:
        """Add a token; return the tokens now safe to release (possibly none)."""
        if not self.stops:
            return [token]
        self._held.append(token)
        self._held_text += token.text
        cut = min((i for i in (self._held_text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release_upto(cut, truncate=True)
        return self._release_upto(len(self._held_text) - self._pending_tail(), truncate=False)

    def flush(self) -> list[GeneratedToken]:
        """At the end of generation (no stop string hit): release everything held."""
        released, self._held, self._held_text = self._held, [], ""
        return released

    def _pending_tail(self) -> int:
        """Length of the longest end of the held text that could still grow into a stop string."""
        text = self._held_text
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def _release_upto(self, boundary: int, *, truncate: bool) -> list[GeneratedToken]:
        released: list[GeneratedToken] = []
        consumed = 0
        while self._held and consumed + len(self._held[0].text) <= boundary:
            token = self._held.pop(0)
            consumed += len(token.text)
            released.append(token)
        if truncate:
            # A token straddling the stop string keeps only its text before it.
            if self._held and consumed < boundary:
                released.append(
                    replace(self._held[0], text=self._held[0].text[: boundary - consumed])
                )
            self._held, self._held_text = [], ""
        else:
            self._held_text = self._held_text[consumed:]
        return released
