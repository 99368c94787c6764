"""The fused engine of the embedder (core/embed_fused.py): chosen for bfloat16 weights, its
vectors the eager path's within the stated cosine whatever the batch and padding, the same
vectors on its fallback without oneDNN packing (a CPU with AVX2 only) and on float32 weights,
run only at the fixed shapes, and given up for the eager path when it fails."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.core import embed_fused
from trifecta.core.embed_compiled import ENGINE_ENV, Engine, load_engine
from trifecta.core.embed_fused import FusedEncoder
from trifecta.core.embeddings import LENGTH_BUCKETS, MAX_BATCH, MiniLMEmbedder, get_embedder

QUERIES = [
    "t=41,p=17,r=63;t+r?",
    "41+53?",
    "a=4,k=9,n=13;a+k?",
    "What is 17 + 25?",
    "lookup_add solved via edge/node-1. verifier judged the answer 94 correct Task: 41+53?",
]
# The least cosine between a compiled and the eager vector of a text, both bfloat16
# (measured: 0.99999+), and to float32's (the eager bfloat16 bound, core/embeddings.py).
COSINE_EAGER, COSINE_FLOAT32 = 0.9999, 0.9995


def bfloat16_on(engine: Engine) -> MiniLMEmbedder:
    """A bfloat16 embedder on `engine`: the shipped one where it is (one load fewer, shared
    with the other embedder tests), else its own (a CPU without native bfloat16)."""
    shipped = get_embedder()
    if shipped.engine == engine:
        return shipped
    return MiniLMEmbedder("bfloat16", engine=engine)


@pytest.fixture(scope="module")
def fused() -> MiniLMEmbedder:
    return bfloat16_on("fused")


def _ids(texts: list[str], embedder: MiniLMEmbedder, length: int) -> tuple[object, object]:
    features = embedder._tokenizer(
        texts, padding="max_length", max_length=length, return_tensors="pt"
    )
    return features["input_ids"], features["attention_mask"]


def test_auto_picks_the_fused_engine_for_bfloat16_and_eager_for_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert load_engine(None, "bfloat16") == "fused"
    assert load_engine(None, "float32") == "eager"
    monkeypatch.setenv(ENGINE_ENV, " Fused ")
    assert load_engine(None, "float32") == "fused"
    monkeypatch.setenv(ENGINE_ENV, "torchscript")
    assert load_engine(None, "bfloat16") == "torchscript"


def test_fused_vectors_are_the_eager_ones_within_the_stated_cosine(
    fused: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = get_embedder("float32").embed(QUERIES)
    alone = np.concatenate([fused.embed([q]) for q in QUERIES])
    together = fused.embed(QUERIES)  # one padded chunk: the mask must hide the padding
    assert fused.engine_in_use == "fused"
    assert alone.dtype == np.float32 and alone.shape == (len(QUERIES), fused.dim)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    with monkeypatch.context() as eager_only:  # the same weights, run eagerly
        eager_only.setattr(fused, "compiled", None)
        eager = fused.embed(QUERIES)
    for ours in (alone, together):
        assert (ours * eager).sum(axis=1).min() >= COSINE_EAGER
        assert (ours * exact).sum(axis=1).min() >= COSINE_FLOAT32
    # One module serves every shape, and only shapes of the fixed set reach it.
    assert fused.compiled is not None
    fused.embed(QUERIES * 4)
    rows = {1 << k for k in range(MAX_BATCH.bit_length())}
    assert len(fused.compiled.shapes) >= 3
    assert all(r in rows and t in LENGTH_BUCKETS for r, t in fused.compiled.shapes)


def test_without_onednn_packing_the_plain_module_gives_the_same_vectors(
    fused: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path of a CPU with AVX2 only (or a torch build without oneDNN): forced here."""
    import torch

    assert isinstance(fused.compiled, FusedEncoder)
    fused.embed(QUERIES[:1])  # built by now
    assert fused.compiled.packed == torch.backends.mkldnn.is_available()
    reason = "mkldnn_reorder_linear_weight: bf16 path needs a CPU with avx512bw"
    monkeypatch.setattr(embed_fused, "onednn_packing", lambda: reason)
    plain = FusedEncoder(fused.model[0].auto_model)  # type: ignore[index]
    ids, mask = _ids(QUERIES[:3], fused, 32)
    with torch.inference_mode():
        vectors = plain.forward(ids, mask)  # type: ignore[arg-type]
        expected = fused.compiled.forward(ids, mask)  # type: ignore[arg-type]
    assert plain.broken is None and not plain.packed and plain.prepack_off == reason
    assert vectors is not None and expected is not None
    assert float((vectors * expected).sum(1).min()) >= 0.9999


def test_float32_weights_run_plain_and_match_float32_eager() -> None:
    import torch

    float32 = get_embedder("float32")
    encoder = FusedEncoder(float32.model[0].auto_model)  # type: ignore[index]
    ids, mask = _ids(QUERIES, float32, 32)
    with torch.inference_mode():
        vectors = encoder.forward(ids, mask)  # type: ignore[arg-type]
    assert vectors is not None and not encoder.packed
    assert encoder.prepack_off is not None and "float32" in encoder.prepack_off
    exact = float32.embed(QUERIES)
    np.testing.assert_allclose(vectors.numpy(), exact, atol=2e-5)


def falls_back_to_eager(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """A compiled path whose build fails (a kernel missing on this CPU) is given up for the
    eager one, which says so and gives the same vector within the stated cosine."""
    assert embedder.compiled is not None
    expected = embedder.embed([text])

    def missing_kernel(*_args: object) -> None:
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(embedder.compiled, "_compile", missing_kernel)
    monkeypatch.setattr(embedder.compiled, "_module", None)
    monkeypatch.setattr(embedder.compiled, "broken", None)  # restored for the shared instance
    vectors = embedder.embed([text])
    assert embedder.engine_in_use == "eager"
    assert embedder.compiled.broken is not None and "oneDNN" in embedder.compiled.broken
    assert float((vectors * expected).sum()) >= COSINE_EAGER


def test_a_failing_build_falls_back_to_eager_and_says_so(
    fused: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    falls_back_to_eager(fused, monkeypatch, QUERIES[2])
