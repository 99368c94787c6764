"""Continuous batching in one replica: the same tokens as decoding one request at a time."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.cognitive.serving.reference import greedy_tokens
from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.engine import BatchingEngine
from trifecta.cognitive.serving.requests import CollectingSink, EngineRequest, SamplingParams
from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import LanguageModel
from trifecta.core.tasks import ALPHABET


@pytest.fixture
def engine(tiny: tuple[Any, Any]) -> Iterator[BatchingEngine]:
    model, tokenizer = tiny
    engine = BatchingEngine(model, TokenCodec(tokenizer), name="t-0", max_batch=6)
    yield engine
    engine.close()


def reference(model: Any, codec: TokenCodec, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens from `transformers`' own `generate`, one request alone, up to EOS."""
    return greedy_tokens(model, codec, prompt, max_new_tokens)


def submit(
    engine: BatchingEngine, prompt: str, *, request_id: str | None = None, **params: Any
) -> CollectingSink:
    sink = CollectingSink()
    request = EngineRequest(engine.codec.encode(prompt), SamplingParams(**params), sink)
    if request_id is not None:
        request.request_id = request_id
    engine.submit(request)
    return sink


def random_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    shared = "t=41,p=17,r=63,s=5;"  # a common prefix, so that the prefix cache is exercised too
    prompts = []
    for i in range(count):
        tail = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 14)))
        prompts.append(shared + tail if i % 2 else tail)
    return prompts


def test_batched_decoding_returns_the_tokens_of_one_at_a_time(
    engine: BatchingEngine, tiny: tuple[Any, Any]
) -> None:
    rng = random.Random(3)
    prompts = random_prompts(24, seed=3)
    budgets = [rng.randint(1, 24) for _ in prompts]
    sinks = []
    for prompt, budget in zip(prompts, budgets, strict=True):
        sinks.append(submit(engine, prompt, max_new_tokens=budget))
        time.sleep(rng.random() * 0.004)  # arrivals while the batch decodes
    for prompt, budget, sink in zip(prompts, budgets, sinks, strict=True):
        generated, completion = sink.wait(timeout=60)
        assert [t.token_id for t in generated] == reference(tiny[0], engine.codec, prompt, budget)
        assert completion.finish_reason == ("length" if len(generated) == budget else "stop")
    # Fewer forward passes than tokens: requests shared steps.
    assert engine.steps < sum(len(s.generated) for s in sinks)
    assert engine.prefix_cache.hits > 0


def test_requests_join_a_running_batch_and_leave_when_done(
    engine: BatchingEngine, tiny: tuple[Any, Any]
) -> None:
    # A prompt whose greedy completion runs the full 50 tokens (no end-of-sequence on the way).
    prompt = next(
        p
        for p in random_prompts(40, seed=5)
        if len(p) < 14 and len(reference(tiny[0], engine.codec, p, 50)) == 50
    )
    long = submit(engine, prompt, max_new_tokens=50)
    while not long.generated:  # the long request is decoding
        time.sleep(0.0005)
    short = [submit(engine, f"{i}+1?", max_new_tokens=3) for i in range(4)]
    for sink in short:
        sink.wait(timeout=30)
    assert long.completion is None  # the short ones joined the batch and left before it ended
    generated, completion = long.wait(timeout=30)
    assert (len(generated), completion.finish_reason) == (50, "length")


def test_cancel_frees_the_batch_slot(long_context: tuple[Any, Any]) -> None:
    model, tokenizer = long_context
    engine = BatchingEngine(model, TokenCodec(tokenizer), name="one", max_batch=1)
    try:
        first = submit(
            engine, "1+1?", max_new_tokens=400, ignore_eos=True, request_id="walked-away"
        )
        second = submit(engine, "2+2?", max_new_tokens=3)
        while not first.generated:
            time.sleep(0.001)
        engine.cancel("walked-away")
        _, completion = first.wait(timeout=30)
        assert completion.finish_reason == "cancelled"
        assert completion.completion_tokens < 400
        _, done = second.wait(timeout=30)  # the freed slot serves the next request
        assert done.finish_reason in ("length", "stop")
        assert engine.finished["cancelled"] == 1
    finally:
        engine.close()


def test_seeded_sampling_draws_the_same_tokens_batched_or_alone(engine: BatchingEngine) -> None:
    def seeded(prompt: str) -> CollectingSink:
        return submit(engine, prompt, max_new_tokens=20, temperature=0.9, top_p=0.9, seed=11)

    alone, _ = seeded("t=41,p=17;p?").wait(timeout=30)
    crowd = [
        submit(engine, prompt, max_new_tokens=20, temperature=1.0)
        for prompt in random_prompts(5, 9)
    ]
    batched, _ = seeded("t=41,p=17;p?").wait(timeout=30)
    for sink in crowd:
        sink.wait(timeout=30)
    assert [t.token_id for t in batched] == [t.token_id for t in alone]


def test_logprobs_and_entropy_are_those_of_the_model(
    engine: BatchingEngine, tiny: tuple[Any, Any]
) -> None:
    model, _ = tiny
    prompt = "t=41,p=17,r=63;t+r?"
    generated, _ = submit(engine, prompt, max_new_tokens=1, top_logprobs=3).wait(timeout=30)
    with torch.inference_mode():
        logits = model(torch.tensor([engine.codec.encode(prompt)])).logits[0, -1]
    logprobs = torch.log_softmax(logits.double(), -1)
    token = generated[0]
    assert token.logprob == pytest.approx(float(logprobs[token.token_id]), abs=1e-4)
    assert token.entropy == pytest.approx(float(-(logprobs.exp() * logprobs).sum()), abs=1e-4)
    best = torch.topk(logprobs, 3)
    assert [alt.logprob for alt in token.top] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert [alt.token for alt in token.top] == [
        engine.codec.token_name(i) for i in best.indices.tolist()
    ]


def test_stop_strings_cut_the_text(engine: BatchingEngine, tiny: tuple[Any, Any]) -> None:
    prompt = "41+17?"
    full = engine.codec.decode(reference(tiny[0], engine.codec, prompt, 12))
    stop = full[3:5]
    generated, completion = submit(engine, prompt, max_new_tokens=12, stop=(stop,)).wait(timeout=30)
    text = "".join(t.text for t in generated)
    assert text == full[: full.index(stop)]
    assert completion.finish_reason == "stop"


def test_the_engine_is_a_language_model(engine: BatchingEngine) -> None:
    assert isinstance(engine, LanguageModel)
    generations = engine.generate(["41+17?", "2+2?"], max_new_tokens=4, top_logprobs=2)
    assert [len(g.tokens) for g in generations] == [len(g.logprobs) for g in generations]
    assert all(len(g.entropies) == len(g.tokens) and g.model == "t-0" for g in generations)
    assert all(len(alts) == 2 for g in generations for alts in g.top_logprobs)


def test_a_joiner_is_prefilled_inside_the_running_step(
    engine: BatchingEngine, tiny: tuple[Any, Any]
) -> None:
    # One forward pass per step, newcomers' prompts included: while a long request decodes,
    # short ones join and leave without adding a single forward pass.
    prompt = next(
        p
        for p in random_prompts(40, seed=5)
        if len(p) < 14 and len(reference(tiny[0], engine.codec, p, 40)) == 40
    )
    long = submit(engine, prompt, max_new_tokens=40)
    while not long.generated:
        time.sleep(0.0005)
    short = [submit(engine, f"{i}+{i}?", max_new_tokens=2, ignore_eos=True) for i in range(4)]
    for sink in short:
        sink.wait(timeout=30)
    long.wait(timeout=30)
    assert long.completion is not None and long.completion.completion_tokens == 40
    assert engine.steps == 40  # one per token of the long request: no extra prefill pass


def test_the_tier_architecture_batches_to_the_tokens_it_decodes_alone() -> None:
    # The tiers are Canon Llamas: their Canon layers read each row's earlier inputs from the
    # slot cache, so rows joining and leaving around a request must not change its tokens.
    from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM
    from trifecta.cognitive.checkpoints import build_tokenizer, llama_config
    from trifecta.cognitive.tiers import get_tier

    torch.manual_seed(1)
    config = llama_config(get_tier("small"))
    config.initializer_range = 0.3  # peaked choices, as the tiny fixture's
    model = CanonLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for mix in model.model.canons:
            mix.weight.normal_(0, 0.3)
    codec = TokenCodec(build_tokenizer())
    engine = BatchingEngine(model, codec, name="canon", max_batch=4)
    try:
        rng = random.Random(7)
        prompts = random_prompts(10, seed=7)
        budgets = [rng.randint(2, 16) for _ in prompts]
        sinks = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            sinks.append(submit(engine, prompt, max_new_tokens=budget))
            time.sleep(rng.random() * 0.003)
        for prompt, budget, sink in zip(prompts, budgets, sinks, strict=True):
            generated, _ = sink.wait(timeout=60)
            assert [t.token_id for t in generated] == reference(model, codec, prompt, budget)
    finally:
        engine.close()


def test_a_prompt_longer_than_the_context_fails_alone(engine: BatchingEngine) -> None:
    too_long = CollectingSink()
    ids = engine.codec.encode("1+1?") * engine.context_length
    engine.submit(EngineRequest(ids, SamplingParams(max_new_tokens=3), too_long))
    fine = submit(engine, "2+2?", max_new_tokens=3)
    with pytest.raises(InvalidInput, match="does not fit"):
        too_long.wait(timeout=30)
    _, completion = fine.wait(timeout=30)
    assert completion.finish_reason in ("length", "stop")


def test_rows_stepped_counts_each_token_once_however_the_steps_batched(
    engine: BatchingEngine,
) -> None:
    """A step feeds each of its rows and hands each its next token, so the rows summed over
    the steps (the batch fill's numerator) equal the tokens decoded, and the steps are at
    most that many (fewer when requests shared steps)."""
    steps, rows = engine.steps, engine.rows_stepped
    sinks = [
        submit(engine, prompt, max_new_tokens=5, ignore_eos=True)
        for prompt in random_prompts(9, seed=11)
    ]
    decoded = sum(len(sink.wait(timeout=60)[0]) for sink in sinks)
    assert decoded == 9 * 5
    assert engine.rows_stepped - rows == decoded
    assert 0 < engine.steps - steps <= decoded


def test_step_times_count_the_step_s_cpu_not_its_waits(
    engine: BatchingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that waits (here: sleeps 50 ms, as a thread does for a busy core) records its
    own CPU time, so a shared machine's waits do not enter the step-time fit."""
    forward = engine._forward.step

    def waiting_step(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(0.05)
        return forward(*args, **kwargs)

    recorded: list[float] = []
    record = engine.step_times.record

    def recording(rows: int, seconds: float) -> None:
        recorded.append(seconds)
        record(rows, seconds)

    monkeypatch.setattr(engine._forward, "step", waiting_step)
    monkeypatch.setattr(engine.step_times, "record", recording)
    started = time.perf_counter()
    submit(engine, "1+1?", max_new_tokens=5, ignore_eos=True).wait(timeout=30)
    deadline = time.monotonic() + 10  # the last step is recorded just after its request ends
    while len(recorded) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(recorded) == 5 and time.perf_counter() - started >= 0.25
    assert max(recorded) < 0.05  # wall clock would read at least the sleep
