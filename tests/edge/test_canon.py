"""The Canon layer: its formula, the runtime's copy bit for bit, and its cache."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.tasks import generate_tasks
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.canon import canon_norm_quantize, canon_rows
from trifecta.edge.kernels.activations import norm_quantize
from trifecta.edge.model import Canon, EdgeTransformer, KVCache
from trifecta.edge.runtime import EdgeRuntime

from .helpers import reference_texts


def test_canon_formula_by_hand() -> None:
    canon = Canon(dim=1, width=3)
    with torch.no_grad():
        canon.weight.copy_(torch.tensor([[0.5], [2.0], [-1.0]]))
    x = torch.tensor([[[1.0], [10.0], [100.0]]])
    # y_t = x_t + 0.5 x_t + 2 x_(t-1) - x_(t-2), positions before 0 count as zero
    expected = torch.tensor([[[1.5], [17.0], [169.0]]])
    assert torch.equal(canon(x), expected)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 12),
    prefix=st.integers(0, 6),
    width=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_runtime_canon_is_the_reference_bit_for_bit(
    length: int, prefix: int, width: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    d = 8
    history = rng.normal(size=(prefix + length, d)).astype(np.float32)
    weight = rng.normal(size=(width, d)).astype(np.float32)
    canon = Canon(d, width)
    with torch.no_grad():
        canon.weight.copy_(torch.from_numpy(weight))
        whole = canon(torch.from_numpy(history)[None])[0].numpy()
        # the reference's cached path: the prefix first, then the rest
        cache = KVCache()
        canon(torch.from_numpy(history[:prefix])[None], cache)
        cached = canon(torch.from_numpy(history[prefix:])[None], cache)[0].numpy()
    assert np.array_equal(cached, whole[prefix:])
    # the runtime: the new positions of one sequence (a prefill), and one position of each
    # of two sequences of different lengths (a decode step)
    positions = np.arange(prefix, prefix + length, dtype=np.int64)
    rows = np.zeros(length, np.int64)
    assert np.array_equal(canon_rows(history[None], rows, positions, weight), whole[prefix:])
    inputs = np.stack([history, np.roll(history, 1, axis=0)])
    with torch.no_grad():
        rolled = canon(torch.from_numpy(inputs[1])[None])[0].numpy()
    last = prefix + length - 1
    ends = np.array([last, prefix], np.int64)
    stepped = canon_rows(inputs, np.array([0, 1], np.int64), ends, weight)
    assert np.array_equal(stepped, np.stack([whole[last], rolled[prefix]]))


@settings(max_examples=30, deadline=None)
@given(
    sequences=st.integers(1, 3),
    filled=st.integers(0, 9),
    width=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_fused_canon_equals_its_steps_apart(
    sequences: int, filled: int, width: int, seed: int
) -> None:
    """`canon_norm_quantize` (store, mix, norm, int8 in one call) gives the same bytes and
    multipliers as the store, `canon_rows` and `norm_quantize` one after another, and stores
    the same cache."""
    rng = np.random.default_rng(seed)
    d, block = 16, 12
    cache = rng.normal(size=(sequences, block, d)).astype(np.float32)
    weight = rng.normal(0, 0.7, size=(width, d)).astype(np.float32)
    norm_weight = rng.normal(1, 0.2, size=d).astype(np.float32)
    # one decode step of every sequence, each at its own position (a prefill is covered by
    # the end-to-end tests below)
    rows = np.arange(sequences, dtype=np.int64)
    positions = rng.integers(0, filled + 1, size=sequences).astype(np.int64)
    x = rng.normal(size=(sequences, d)).astype(np.float32)
    apart = cache.copy()
    apart[rows, positions] = x
    expected_q, expected_m = norm_quantize(
        canon_rows(apart, rows, positions, weight), norm_weight, 1e-5
    )
    fused = cache.copy()
    x_q, multiplier = canon_norm_quantize(fused, rows, positions, x, weight, norm_weight, 1e-5)
    assert np.array_equal(fused, apart)
    assert np.array_equal(x_q, expected_q)
    assert np.array_equal(multiplier, expected_m)


def test_runtime_decode_steps_equal_one_whole_prefill(small_artifact: EdgeArtifact) -> None:
    """The runtime's decode path (prefills, then one token a step through the cache, two
    rows at different positions in one batch) computes the logits of a prefill of the
    whole sequence so far, with a Canon layer that changes every token."""
    runtime = EdgeRuntime(_with_strong_canon(small_artifact))
    ids = [1, 7, 9, 12, 5, 22, 8, 3, 14, 30]

    def whole(n: int) -> np.ndarray:
        states, _ = runtime.start([""])
        return runtime.forward(states, [ids[:n]])[0]

    states, _ = runtime.start(["", ""])
    runtime.forward([states[0]], [ids[:2]])
    runtime.forward([states[1]], [ids[:4]])
    for k in range(len(ids) - 4):
        logits = runtime.forward(states, [[ids[2 + k]], [ids[4 + k]]])
        assert np.allclose(logits[0], whole(3 + k), atol=1e-6)
        assert np.allclose(logits[1], whole(5 + k), atol=1e-6)
    # prefills of sequences from separate caches, in one call (a cache per sequence)
    apart = [runtime.start([""])[0][0] for _ in range(2)]
    logits = runtime.forward(apart, [ids[:6], ids[:9]])
    assert np.allclose(logits, np.stack([whole(6), whole(9)]), atol=1e-6)


def _with_strong_canon(artifact: EdgeArtifact) -> EdgeArtifact:
    """The artifact with large random Canon weights, so that the layer changes every token."""
    rng = np.random.default_rng(0)
    floats = dict(artifact.floats)
    for name, tensor in floats.items():
        if name.endswith("canon.weight"):
            floats[name] = rng.normal(0, 0.7, size=tensor.shape).astype(np.float32)
    return EdgeArtifact(artifact.config, artifact.ternary, floats, artifact.layout)


def test_cached_forward_equals_the_whole_sequence(small_artifact: EdgeArtifact) -> None:
    model = EdgeTransformer.from_artifact(_with_strong_canon(small_artifact))
    ids = torch.tensor([[1, 7, 9, 12, 5, 22, 8]])
    with torch.no_grad():
        whole = model(ids)
        caches = [KVCache() for _ in model.blocks]
        first = model(ids[:, :4], caches)
        steps = [model(ids[:, i : i + 1], caches, start=i) for i in range(4, ids.shape[1])]
    assert torch.allclose(torch.cat([first, *steps], dim=1), whole, atol=1e-5)


def test_tokens_with_a_strong_canon_equal_the_pytorch_model(small_artifact: EdgeArtifact) -> None:
    artifact = _with_strong_canon(small_artifact)
    prompts = [t.prompt for t in generate_tasks(12, seed=5, split="heldout")]
    texts = [g.text for g in EdgeRuntime(artifact).generate(prompts, max_new_tokens=5)]
    assert texts == reference_texts(artifact, prompts, 5)
