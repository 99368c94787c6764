"""The cascade's outputs typed as what they are: `Backend.generate` returns plain generations,
a cascade's carry the path each request took through the tiers."""

from __future__ import annotations

from collections.abc import Sequence

from trifecta.cognitive.cascade import CascadeGeneration, EscalationCascade


def answers(
    model: EscalationCascade, prompts: Sequence[str], max_new_tokens: int = 6
) -> list[CascadeGeneration]:
    """`model.generate(prompts)`, each output checked to carry the cascade's decisions."""
    outputs: list[CascadeGeneration] = []
    for output in model.generate(prompts, max_new_tokens=max_new_tokens):
        assert isinstance(output, CascadeGeneration), "a cascade answers with its decisions"
        outputs.append(output)
    return outputs
