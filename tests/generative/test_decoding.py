"""Decoding fills every mask within its steps, batched or not, cached or not."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import generate_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import DiffusionLM

PROMPTS = [t.prompt for t in generate_tasks(6, seed=3, split="heldout")]
MASK = CharTokenizer().mask_id


@settings(max_examples=25, deadline=None)
@given(
    block=st.sampled_from([1, 2, 4, 5, 10, 20]),
    extra=st.integers(0, 25),
    threshold=st.one_of(st.none(), st.floats(0.05, 0.99)),
    cache=st.booleans(),
    size=st.integers(1, 6),
)
def test_every_mask_is_filled_within_the_steps(
    converted: DiffusionLM, block: int, extra: int, threshold: float | None, cache: bool, size: int
) -> None:
    config = DecodeConfig(
        gen_length=20,
        block_length=block,
        steps=20 // block + extra,
        threshold=threshold,
        cache=cache,
    )
    results, stats = Decoder(converted).decode(PROMPTS[:size], config)
    assert stats.forward_passes <= config.steps
    for result in results:
        assert len(result.tokens) == 20 and MASK not in result.tokens
        assert 1 <= result.steps <= config.steps


def test_one_token_per_step_takes_one_step_per_position(converted: DiffusionLM) -> None:
    config = DecodeConfig(steps=20, threshold=None)
    results, stats = Decoder(converted).decode(PROMPTS, config)
    assert stats.forward_passes == 20 and all(r.steps == 20 for r in results)


def test_a_request_decodes_the_same_alone_and_in_a_batch(shipped: DiffusionLM) -> None:
    config = DecodeConfig(cache=False)
    decoder = Decoder(shipped)
    batched, _ = decoder.decode(PROMPTS, config)
    for prompt, together in zip(PROMPTS, batched, strict=True):
        alone, _ = decoder.decode([prompt], config)
        assert alone[0].tokens == together.tokens


def test_parallel_unmasking_takes_fewer_steps(shipped: DiffusionLM) -> None:
    decoder = Decoder(shipped)
    _, parallel = decoder.decode(PROMPTS, DecodeConfig())
    _, sequential = decoder.decode(PROMPTS, DecodeConfig(threshold=None))
    assert parallel.forward_passes < sequential.forward_passes


@pytest.mark.parametrize(
    ("options", "field"),
    [({"steps": 0}, "steps"), ({"steps": 2}, "steps"), ({"block_length": 5}, "block_length")],
)
def test_impossible_configs_are_refused(options: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        DecodeConfig(**options)
    assert err.value.field == field


def test_the_cache_reads_what_a_full_pass_computed(converted: DiffusionLM) -> None:
    """One block step from the cache equals a full pass when nothing changed since."""
    from trifecta.generative.sequences import encode_prompts

    batch = encode_prompts(PROMPTS, CharTokenizer(), 20, converted.config.block_size)
    s, e = batch.start + 5, batch.start + 10
    with torch.no_grad():
        full, caches = converted(batch.ids, batch.positions, batch.valid)
        span = converted.forward_span(
            batch.ids[:, s:e], batch.positions[:, s:e], batch.valid, (s, e), caches
        )
    assert torch.allclose(span, full[:, s:e], atol=1e-5)


@pytest.mark.parametrize("cache", [False, True])
def test_a_shifted_model_fills_every_mask_and_its_cache_matches_a_full_pass(cache: bool) -> None:
    """A shifted model (each token read off the position before) decodes blocks whose first
    position is predicted from the last position of the block before: the cached span starts
    one position early and equals a full pass when nothing changed."""
    from trifecta.generative.assets import ar_checkpoint_dir
    from trifecta.generative.convert import convert_llama
    from trifecta.generative.sequences import encode_prompts

    model = convert_llama(ar_checkpoint_dir("ar-small-canon"), shift=True).eval()
    config = DecodeConfig(gen_length=24, block_length=4, steps=12, cache=cache)
    results, stats = Decoder(model).decode(PROMPTS, config)
    assert stats.forward_passes <= 12
    assert all(len(r.tokens) == 24 and MASK not in r.tokens for r in results)
    batch = encode_prompts(PROMPTS, CharTokenizer(), 24, model.config.block_size)
    s, e = batch.start + 3, batch.start + 8
    with torch.no_grad():
        full, caches = model(batch.ids, batch.positions, batch.valid)
        span = model.forward_span(
            batch.ids[:, s:e], batch.positions[:, s:e], batch.valid, (s, e), caches
        )
    assert torch.allclose(span, full[:, s:e], atol=1e-5)


def test_dev_tasks_are_held_out_and_disjoint_from_the_heldout_tasks() -> None:
    """The served settings are chosen on dev tasks: never trained on, never reported."""
    from trifecta.core.tasks import split_of
    from trifecta.generative.evaluate import HELDOUT_RESERVED, dev_tasks, heldout_tasks

    dev = dev_tasks(50, (2, 4))
    for grade, tasks in dev.items():
        assert len(tasks) == 50 and all(t.difficulty == grade for t in tasks)
        assert all(split_of(t.prompt) == "heldout" for t in tasks)
        reported = {t.prompt for t in heldout_tasks(HELDOUT_RESERVED, [grade])[grade]}
        assert not reported & {t.prompt for t in tasks}
