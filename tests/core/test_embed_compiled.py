"""The TorchScript engine of the embedder (core/embed_compiled.py): chosen for bfloat16 weights,
reported, its vectors the eager path's within the stated cosine (so queries and the learner's
memories rank alike whichever engine embedded them), run only at the fixed shapes, and given
up for the eager path when it fails."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.core import embed_compiled
from trifecta.core.embed_compiled import ENGINE_ENV, CompiledEncoder, load_engine
from trifecta.core.embeddings import LENGTH_BUCKETS, MAX_BATCH, MiniLMEmbedder, get_embedder
from trifecta.core.errors import InvalidInput

from .test_embed_fused import COSINE_EAGER, COSINE_FLOAT32, bfloat16_on, falls_back_to_eager

QUERIES = ["t=41,p=17,r=63;t+r?", "41+53?", "a=4,k=9,n=13;a+k?", "What is 17 + 25?"]


@pytest.fixture(scope="module")
def compiled() -> MiniLMEmbedder:
    return bfloat16_on("torchscript")


def test_the_engine_follows_the_precision_and_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert load_engine(None, "bfloat16") == "fused"  # core/embed_fused.py; this one on request
    assert load_engine(None, "float32") == "eager"
    monkeypatch.setenv(ENGINE_ENV, "eager")
    assert load_engine(None, "bfloat16") == "eager"
    monkeypatch.setenv(ENGINE_ENV, "onnx")
    with pytest.raises(InvalidInput) as error:
        load_engine(None, "bfloat16")
    assert error.value.field == ENGINE_ENV


def test_compiled_vectors_are_the_eager_ones_within_the_stated_cosine(
    compiled: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = get_embedder("float32").embed(QUERIES[:2])
    ours = np.concatenate([compiled.embed(QUERIES[:1]), compiled.embed(QUERIES[1:2])])
    assert compiled.engine_in_use == "torchscript"
    assert ours.dtype == np.float32 and ours.shape == (2, compiled.dim)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    with monkeypatch.context() as eager_only:  # the same weights, run eagerly
        eager_only.setattr(compiled, "compiled", None)
        eager = np.concatenate([compiled.embed(QUERIES[:1]), compiled.embed(QUERIES[1:2])])
    assert (ours * eager).sum(axis=1).min() >= COSINE_EAGER
    assert (ours * exact).sum(axis=1).min() >= COSINE_FLOAT32
    # One traced module serves every shape, and only shapes of the fixed set reach it.
    assert compiled.compiled is not None
    compiled.embed(QUERIES * 4)
    rows = {1 << k for k in range(MAX_BATCH.bit_length())}
    assert (16, 16) in compiled.compiled.shapes or (16, 24) in compiled.compiled.shapes
    assert all(r in rows and t in LENGTH_BUCKETS for r, t in compiled.compiled.shapes)


def test_a_failing_compile_falls_back_to_eager_and_says_so(
    compiled: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    falls_back_to_eager(compiled, monkeypatch, QUERIES[2])


def test_packed_weights_give_the_plain_trace_s_vectors_and_leave_the_model_alone(
    compiled: MiniLMEmbedder,
) -> None:
    import torch

    assert isinstance(compiled.compiled, CompiledEncoder)
    compiled.embed(QUERIES[:1])  # traced by now
    if torch.backends.mkldnn.is_available():
        assert compiled.compiled.prepacked > 0 and compiled.compiled.prepack_off is None
    bert = compiled.model[0].auto_model  # type: ignore[index]
    plain = CompiledEncoder(bert, prepack=False)
    with torch.inference_mode():
        ids = torch.tensor([[101, 2054, 2003, 2459, 1009, 2423, 1029, 102]])
        mask = torch.ones_like(ids)
        packed_vectors = compiled.compiled.forward(ids, mask)
        plain_vectors = plain.forward(ids, mask)
    assert plain.prepacked == 0 and packed_vectors is not None and plain_vectors is not None
    assert float((packed_vectors * plain_vectors).sum()) >= 0.99999
    # The eager fallback still runs the model's own Linears, not the packed ones.
    assert not any(type(m).__name__ == "PackedLinear" for m in bert.modules())
    assert sum(type(m) is torch.nn.Linear for m in bert.modules()) == 37  # 6 x 6 + pooler


def test_packing_unavailable_traces_plain_linears_and_says_why(
    compiled: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def no_packing() -> type[torch.nn.Module]:
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs a CPU with avx512bw")

    assert compiled.compiled is not None
    monkeypatch.setattr(embed_compiled, "_packed_linear_class", no_packing)
    plain = CompiledEncoder(compiled.model[0].auto_model)  # type: ignore[index]
    with torch.inference_mode():
        ids = torch.tensor([[101, 2054, 2003, 2459, 1009, 2423, 1029, 102] + [0] * 8])
        mask = (ids > 0).long()
        vectors = plain.forward(ids, mask)
        expected = compiled.compiled.forward(ids, mask)
    assert plain.broken is None and plain.prepacked == 0
    assert plain.prepack_off is not None and "avx512bw" in plain.prepack_off
    assert vectors is not None and expected is not None
    assert float((vectors * expected).sum()) >= 0.99999
