"""The escalation cascade over the shipped tiers: where it escalates and where it does not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cognitive.cascade_answers import answers
from trifecta.cognitive.backends import shipped_tiers
from trifecta.cognitive.calibration import ALWAYS_ESCALATE, ALWAYS_KEEP, Target, calibrate
from trifecta.cognitive.cascade import Decision, EscalationCascade, Thresholds, cascade_of
from trifecta.cognitive.cost import all_tier_costs
from trifecta.cognitive.entropy import signal_score
from trifecta.cognitive.observe import run_tiers
from trifecta.cognitive.scratchpad import ANSWER_TOKENS
from trifecta.cognitive.tiers import AUTO_MODEL, TIER_NAMES
from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import LanguageModel
from trifecta.core.tasks import DEFAULT_MIX, generate_tasks

PROMPTS = [t.prompt for t in generate_tasks(24, seed=11, split="heldout", difficulties=DEFAULT_MIX)]


def cascade(small: float, medium: float, **options: object) -> EscalationCascade:
    thresholds = Thresholds(aggregate="max", window=4, values={"small": small, "medium": medium})
    return cascade_of(shipped_tiers(TIER_NAMES), all_tier_costs(), thresholds, **options)


def test_the_cascade_is_a_language_model_named_auto() -> None:
    model = cascade(ALWAYS_KEEP, ALWAYS_KEEP)
    assert isinstance(model, LanguageModel) and model.name == AUTO_MODEL


def test_no_escalation_below_the_thresholds() -> None:
    outputs = answers(cascade(ALWAYS_KEEP, ALWAYS_KEEP), PROMPTS)
    alone = shipped_tiers(["small"])[0].generate(PROMPTS, max_new_tokens=6)
    for output, expected in zip(outputs, alone, strict=True):
        assert output.path == ["small"] and output.model == "small"
        assert output.text == expected.text
        (decision,) = output.decisions
        assert not decision.escalated and decision.threshold == ALWAYS_KEEP


def test_escalation_to_every_tier_when_every_signal_crosses() -> None:
    outputs = answers(cascade(ALWAYS_ESCALATE, ALWAYS_ESCALATE), PROMPTS)
    large = shipped_tiers(["large"])[0].generate(PROMPTS, max_new_tokens=6)
    costs = all_tier_costs()
    for output, expected in zip(outputs, large, strict=True):
        assert output.path == list(TIER_NAMES) and output.model == "large"
        assert output.text == expected.text and output.tokens == expected.tokens
        small, medium, last = output.decisions
        # A tier stops as soon as its signal crosses: at the first step here.
        assert small.escalated and small.step == 0 and small.completion_tokens == 1
        assert medium.escalated and last.threshold is None and not last.escalated
        assert output.flops == pytest.approx(
            sum(
                costs[d.tier].flops_per_token * (d.prompt_tokens + d.completion_tokens)
                for d in output.decisions
            )
        )


def test_escalation_exactly_where_the_signal_crosses() -> None:
    small = shipped_tiers(["small"])[0].generate(PROMPTS, max_new_tokens=6)
    scores = np.array([signal_score(g.entropies, "max", 4) for g in small])
    threshold = float(np.median(scores))
    logged: list[tuple[str, Decision]] = []
    model = cascade(threshold, ALWAYS_KEEP, on_decision=lambda p, d: logged.append((p, d)))
    outputs = answers(model, PROMPTS)
    for score, output in zip(scores, outputs, strict=True):
        first = output.decisions[0]
        assert first.escalated == (score > threshold)
        assert output.path == (["small", "medium"] if score > threshold else ["small"])
        if first.escalated:
            assert first.signal > threshold
            assert first.step is not None, "an escalation names the step its signal crossed at"
            assert first.completion_tokens == first.step + 1
        else:
            assert first.signal == pytest.approx(score)
    assert 0 < sum(o.decisions[0].escalated for o in outputs) < len(PROMPTS)
    assert len(logged) == sum(len(o.decisions) for o in outputs)


def test_accepted_prefix_is_handed_to_the_next_tier() -> None:
    """With a window of one step, the tokens before the crossing step are kept and the next
    tier continues after them."""
    small, medium = shipped_tiers(["small", "medium"])
    checked = 0
    for prompt, alone in zip(PROMPTS, small.generate(PROMPTS, max_new_tokens=6), strict=True):
        rises = [
            j
            for j in range(1, len(alone.entropies))
            if alone.entropies[j] > max(alone.entropies[:j])
        ]
        if not rises:
            continue
        j = rises[0]
        threshold = (max(alone.entropies[:j]) + alone.entropies[j]) / 2
        values = {"small": threshold, "medium": ALWAYS_KEEP}
        model = cascade_of(
            shipped_tiers(TIER_NAMES),
            all_tier_costs(),
            Thresholds(aggregate="max", window=1, values=values),
            reuse_prefix=True,
        )
        (output,) = answers(model, [prompt])
        assert output.path == ["small", "medium"] and output.decisions[0].step == j
        assert output.tokens[:j] == alone.tokens[:j]
        (continued,) = medium.generate([prompt + "".join(alone.tokens[:j])], max_new_tokens=6 - j)
        assert output.tokens[j:] == continued.tokens
        assert output.text == "".join(alone.tokens[:j]) + continued.text
        assert output.prompt_tokens == len(prompt) + 1  # the prompt and <bos>, not the prefix
        checked += 1
        if checked == 3:
            break
    assert checked > 0


def test_a_router_can_choose_the_first_tier() -> None:
    model = cascade(
        ALWAYS_KEEP, ALWAYS_KEEP, start=lambda prompts: [2 if "-" in p else 0 for p in prompts]
    )
    for prompt, output in zip(PROMPTS, answers(model, PROMPTS), strict=True):
        assert output.path == (["large"] if "-" in prompt else ["small"])
    bad = cascade(ALWAYS_KEEP, ALWAYS_KEEP, start=lambda prompts: [7] * len(prompts))
    with pytest.raises(InvalidInput, match="start"):
        bad.generate(PROMPTS[:1])


def test_missing_threshold_is_refused() -> None:
    with pytest.raises(InvalidInput, match="thresholds"):
        cascade_of(shipped_tiers(TIER_NAMES), all_tier_costs(), Thresholds(values={"small": 0.5}))


@pytest.mark.slow
def test_calibrated_rate_holds_on_held_out_traffic() -> None:
    """Fit a 30% hand-on rate on one sample of traffic; the live cascade keeps it on another."""
    costs = all_tier_costs()
    backends = shipped_tiers(TIER_NAMES)
    sample = generate_tasks(300, seed=21, split="heldout", difficulties=DEFAULT_MIX)
    runs = run_tiers(backends, costs, sample)
    fitted = calibrate(
        runs.observations("max", 4, labelled=False),
        Target(kind="rate", value=0.3),
        aggregate="max",
        window=4,
    )
    held_out = [
        t.prompt for t in generate_tasks(400, seed=22, split="heldout", difficulties=DEFAULT_MIX)
    ]
    # The same completion budget as the calibration runs: a signal read over fewer tokens of a
    # worked answer crosses less often.
    outputs = answers(cascade_of(backends, costs, fitted.thresholds), held_out, ANSWER_TOKENS)
    reached_medium = [o for o in outputs if "medium" in o.path]
    small_rate = len(reached_medium) / len(outputs)
    medium_rate = sum("large" in o.path for o in reached_medium) / max(1, len(reached_medium))
    # Binomial spread at n = 400 is about 2.3 points; allow for the sample's own error too.
    assert small_rate == pytest.approx(0.3, abs=0.08)
    assert medium_rate == pytest.approx(0.3, abs=0.12)
