"""The check behind a verified expert mask (`selection.verified_mask`).

Reference tasks of the capsule's kind (its domain, the default grade mix, the family's
training split: never the held-out tasks the model is evaluated on) are decoded once with
every expert and the capsule's router biases; the answers the task verifier accepts are the
reference successes. A candidate mask is then judged by re-decoding those successes only:
the share still verified is what the mask keeps of what the model could do.

What makes a check cheap (`mask learn` decodes the successes once per candidate expert):

- a trial stops as soon as more successes broke than the tolerance allows: it cannot pass,
  and how many more would break does not change the verdict;
- the successes that broke under earlier candidates are decoded first, in small batches
  (16, then 48: on a fine-grained model the same look-ups and sums break whichever shard
  goes), so a candidate that cannot pass is usually refused after one of them;
- the rest are decoded in one batch (one pass of the decoder over all of them).

A mask that passes lost at most `tolerance` of the successes checked; with n successes and
k of them lost, `loss_bound` is the exact (Clopper-Pearson) 95% upper bound on the share it
loses of the model's successes at large, which shrinks as the reference set grows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DEFAULT_MIX, Task, generate_tasks
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import Routing
from trifecta.generative.selection import ExpertMask, checked_half_mask, half_mask, verified_mask
from trifecta.generative.sequences import answer_of

# The seed of the reference tasks: fixed, so that learning a mask twice gives the same mask.
CHECK_SEED = 11
# The reference tasks `mask learn` checks by default: about 100 successes of the shipped
# model, of which a passing mask may lose one at a 1% tolerance. What that certifies
# (`loss_bound`, 95%): at most 2.9% of the model's successes at large lost for none lost
# of 102, 4.6% for one; `--check-tasks 400` (about 270 successes) tightens it to 1.1%-2.3%.
# Measured (one thread, load average 4-5 on 2 cores): 150 tasks 17 s, 200 tasks 32 s.
DEFAULT_CHECK_TASKS = 150
FIRST_BATCH = 16  # the successes broken most often so far, decoded before the rest


def reference_tasks(count: int, domain: str | None) -> list[Task]:
    """`count` training-split tasks of `domain` in the default grade mix."""
    return generate_tasks(
        count, seed=CHECK_SEED, split="train", difficulties=DEFAULT_MIX, domain=domain
    )


def loss_bound(lost: int, checked: int) -> float:
    """Exact 95% upper bound (one-sided Clopper-Pearson) on a share lost, `lost` of
    `checked` seen: the beta quantile, in closed form when none was lost."""
    if checked == 0:
        return 1.0
    if lost == 0:
        return 1 - 0.05 ** (1 / checked)
    if lost >= checked:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, lost + 1, checked - lost))


class SuccessCheck:
    """Reference successes of the full model and the share of them a mask keeps."""

    def __init__(
        self,
        decoder: Decoder,
        tasks: Sequence[Task],
        *,
        bias: torch.Tensor | None = None,
        config: DecodeConfig | None = None,
        batch: int = 256,
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
        self.decoded = 0  # successes re-decoded over all trials
        self.broken = [0] * len(self.successes)  # trials each success broke in
        self.lost = 0  # successes the last passing mask lost

    def _verdicts(self, tasks: Sequence[Task], routing: Routing) -> list[bool]:
        verdicts: list[bool] = []
        for i in range(0, len(tasks), self.batch):
            chunk = tasks[i : i + self.batch]
            results, _ = self.decoder.decode([t.prompt for t in chunk], self.config, routing)
            verdicts += [answer_of(r.text) == t.answer for r, t in zip(results, chunk, strict=True)]
        return verdicts

    def retained(self, mask: ExpertMask, floor: float = 0.0) -> float:
        """Share of the reference successes still answered right under `mask` (1.0 when the
        full model had none: nothing to lose). Once the share cannot reach `floor` the trial
        stops and returns the share of the successes not yet seen broken, below `floor`."""
        n = len(self.successes)
        if not n:
            return 1.0
        self.trials += 1
        routing = Routing(bias=self.bias, active=mask.active(self.decoder.model.config.n_experts))
        allowed = math.floor((1 - floor) * n + 1e-9)  # failures a passing mask may have
        order = sorted(range(n), key=lambda i: -self.broken[i])  # most often broken first
        lost = 0
        # batches of 16, 48, then the rest: a trial that cannot pass usually stops early
        cuts = [0, FIRST_BATCH, 4 * FIRST_BATCH, n]
        for chunk in (order[a:b] for a, b in itertools.pairwise(cuts)):
            if not chunk:
                continue
            kept = self._verdicts([self.successes[i] for i in chunk], routing)
            self.decoded += len(chunk)
            for i, ok in zip(chunk, kept, strict=True):
                if not ok:
                    self.broken[i] += 1
                    lost += 1
            if lost > allowed:
                break
        if lost <= allowed:
            self.lost = lost
        return (n - lost) / n


def learn_verified_mask(
    decoder: Decoder,
    *,
    traffic: torch.Tensor | None,
    domain: str | None,
    tolerance: float = 0.01,
    check_tasks: int = DEFAULT_CHECK_TASKS,
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
    mask = verified_mask(
        order,
        lambda m: check.retained(m, floor=1 - tolerance),
        decoder.model.config.top_k,
        tolerance,
        on_trial,
    )
    return mask, check


def learn_checked_half_mask(
    decoder: Decoder,
    *,
    traffic: torch.Tensor,
    domain: str | None,
    granularity: int,
    check_tasks: int = DEFAULT_CHECK_TASKS,
    bias: torch.Tensor | None = None,
) -> tuple[ExpertMask, SuccessCheck]:
    """A half mask whose copy of each shard is checked: `half_mask` from the capsule's
    `traffic`, then the swaps that keep more reference successes of `check_tasks` tasks of
    its `domain` (`selection.checked_half_mask`)."""
    if check_tasks < 1:
        raise InvalidInput(f"must be positive, got {check_tasks}", field="check_tasks")
    config = decoder.model.config
    start = half_mask(traffic, granularity, config.top_k)
    check = SuccessCheck(decoder, reference_tasks(check_tasks, domain), bias=bias)
    mask = checked_half_mask(
        start, granularity, config.n_experts, lambda m, floor: check.retained(m, floor)
    )
    return mask, check
