"""The backend interface every language model of the cognitive layer implements.

A backend satisfies `core.protocols.LanguageModel`: it completes a batch of prompts and returns,
for every generated token, its log-probability and the entropy of the next-token distribution
it came from (both of the model's unfiltered distribution: temperature 1, no top-p), which is
what the escalation signal reads. The end-of-sequence token is not part of the returned tokens,
as in the OpenAI API.

Backends that decode step by step accept a `StopRule` that ends one sequence early: the
cascade uses it to stop a tier as soon as its signal crosses the threshold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import Generation

# (index of the prompt in the batch, entropies and tokens generated so far) -> stop this
# sequence now. The tokens let a rule find the steps of a worked answer.
StopRule = Callable[[int, Sequence[float], Sequence[str]], bool]
MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit
STOPPED_BY_RULE = "signal"  # finish_reason of a sequence a StopRule ended


@dataclass(frozen=True)
class SamplingOptions:
    """Validated generation options (each error names its field)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInput("must be at least 1", field="max_new_tokens")
        if not self.temperature >= 0:
            raise InvalidInput("must be 0 (greedy) or positive", field="temperature")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"must be between 0 and {MAX_TOP_LOGPROBS}", field="top_logprobs")
        if any(not s for s in self.stop):
            raise InvalidInput("stop strings must not be empty", field="stop")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise InvalidInput("expected a list of prompts, got one string", field="prompts")
    items = list(prompts)
    for i, prompt in enumerate(items):
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput(f"prompt {i} is empty or not text", field="prompt")
    return items


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string (excluded), and whether one occurred."""
    positions = [text.find(s) for s in stop if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


class Backend(ABC):
    """A language model the cognitive layer can call and price."""

    def __init__(self, name: str, *, cost_per_token: float | None = None):
        self._name = name
        # USD per token processed (prompt and completion); None when nothing prices it.
        self.cost_per_token = cost_per_token

    @property
    def name(self) -> str:
        return self._name

    @property
    def supports_stop_rule(self) -> bool:
        """Whether `stop_rule` is honoured while decoding (else it is applied afterwards)."""
        return False

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
        stop_rule: StopRule | None = None,
    ) -> list[Generation]:
        items = check_prompts(prompts)
        options = SamplingOptions(
            max_new_tokens, float(temperature), int(top_logprobs), tuple(stop)
        )
        if not items:
            return []
        return self._generate(items, options, stop_rule)

    @abstractmethod
    def _generate(
        self, prompts: list[str], options: SamplingOptions, stop_rule: StopRule | None
    ) -> list[Generation]:
        """Complete validated, non-empty `prompts`."""
