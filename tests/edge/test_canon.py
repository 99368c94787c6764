"""The Canon layer: its formula, the runtime's copy bit for bit, and its cache."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.tasks import generate_tasks
from trifecta.edge.artifact import EdgeArtifact
from trifecta.edge.canon import canon_rows
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
