"""The check behind a verified expert mask (`selection.verified_mask`).

Reference tasks of the capsule's kind (its domain, the default grade mix, the family's
training split: never the held-out tasks the model is evaluated on) are decoded once with
every expert and the capsule's router biases; the answers the task verifier accepts are the
reference successes. A candidate mask is then judged by re-decoding those successes only:
the share still verified is what the mask keeps of what the model could do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DEFAULT_MIX, Task, generate_tasks
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import Routing
from trifecta.generative.selection import ExpertMask, verified_mask
from trifecta.generative.sequences import answer_of

# The seed of the reference tasks: fixed, so that learning a mask twice gives the same mask.
CHECK_SEED = 11


def reference_tasks(count: int, domain: str | None) -> list[Task]:
    """`count` training-split tasks of `domain` in the default grade mix."""
    return generate_tasks(
        count, seed=CHECK_SEED, split="train", difficulties=DEFAULT_MIX, domain=domain
    )


class SuccessCheck:
    """Reference successes of the full model and the share of them a mask keeps."""

    def __init__(
        self,
        decoder: Decoder,
        tasks: Sequence[Task],
        *,
        bias: torch.Tensor | None = None,
        config: DecodeConfig | None = None,
        batch: int = 100,
    ):
        self.decoder, self.bias, self.batch = decoder, bias, batch
        self.config = config or DecodeConfig()
        routing = Routing(bias=bias)
        verdicts = self._verdicts(tasks, routing)
        self.tasks = len(tasks)
        self.successes = [t for t, ok in zip(tasks, verdicts, strict=True) if ok]
        # (n_layers, E) tokens the reference decoding routed: the candidates' order when the
        # capsule has no traffic of its own yet
        self.load = routing.load if routing.load is not None else torch.zeros(0)
        self.trials = 0

    def _verdicts(self, tasks: Sequence[Task], routing: Routing) -> list[bool]:
        verdicts: list[bool] = []
        for i in range(0, len(tasks), self.batch):
            chunk = tasks[i : i + self.batch]
            results, _ = self.decoder.decode([t.prompt for t in chunk], self.config, routing)
            verdicts += [answer_of(r.text) == t.answer for r, t in zip(results, chunk, strict=True)]
        return verdicts

    def retained(self, mask: ExpertMask) -> float:
        """Share of the reference successes still answered right under `mask` (1.0 when the
        full model had none: nothing to lose)."""
        if not self.successes:
            return 1.0
        self.trials += 1
        active = mask.active(self.decoder.model.config.n_experts)
        kept = self._verdicts(self.successes, Routing(bias=self.bias, active=active))
        return sum(kept) / len(kept)


def learn_verified_mask(
    decoder: Decoder,
    *,
    traffic: torch.Tensor | None,
    domain: str | None,
    tolerance: float = 0.01,
    check_tasks: int = 400,
    bias: torch.Tensor | None = None,
    on_trial: Callable[[int, int, bool], None] | None = None,
) -> tuple[ExpertMask, SuccessCheck]:
    """A capsule's verified mask: candidates ordered by its routed `traffic` (n_layers, E)
    (the reference decoding's own when the capsule has none yet), each drop checked against
    the reference successes of `check_tasks` tasks of its `domain`."""
    if check_tasks < 1:
        raise InvalidInput(f"must be positive, got {check_tasks}", field="check_tasks")
    if not 0 <= tolerance < 1:  # refused before the reference decoding, not after it
        raise InvalidInput(f"must be in [0, 1), got {tolerance}", field="tolerance")
    check = SuccessCheck(decoder, reference_tasks(check_tasks, domain), bias=bias)
    order = traffic if traffic is not None and float(traffic.sum()) > 0 else check.load
    mask = verified_mask(order, check.retained, decoder.model.config.top_k, tolerance, on_trial)
    return mask, check
