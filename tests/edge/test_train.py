"""The training recipe: seeded, answer-only loss, learns, and packs what it trained."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from trifecta.core.tasks import make_task
from trifecta.core.tokenizer import CharTokenizer
from trifecta.edge.bitlinear import ternary_weights
from trifecta.edge.train import IGNORE, TrainConfig, encode_batch, to_artifact, train

from .conftest import SMALL


def test_loss_is_on_the_answer_only() -> None:
    tokenizer = CharTokenizer()
    ids, labels = encode_batch([make_task("41+17?"), make_task("t=4,p=17,r=63;p?")], tokenizer, 48)
    assert ids[0, 0] == tokenizer.bos_id
    supervised = [
        tokenizer.decode([t for t in row.tolist() if t != IGNORE], skip_special=False)
        for row in labels
    ]
    assert supervised == ["58<eos>", "17<eos>"]


def test_same_seed_same_artifact() -> None:
    config = TrainConfig(steps=6, batch_size=8, model=SMALL)
    first, second = train(config), train(config)
    assert first.artifact.payload_sha256() == second.artifact.payload_sha256()
    other = train(config.model_copy(update={"seed": 1}))
    assert other.artifact.payload_sha256() != first.artifact.payload_sha256()


@pytest.mark.slow
def test_training_lowers_the_loss() -> None:
    losses: list[float] = []
    train(
        TrainConfig(steps=150, batch_size=32, model=SMALL, mix={2: 1.0}),
        lambda _step, loss: losses.append(loss),
    )
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:5]) / 5


def test_artifact_holds_the_quantised_latent_weights() -> None:
    from trifecta.edge.model import EdgeTransformer

    torch.manual_seed(0)
    model = EdgeTransformer(SMALL)
    artifact = to_artifact(model, "b3")
    for name, layer in model.bitlinears().items():
        values, beta = ternary_weights(layer.weight.detach())
        assert (artifact.ternary[name].values() == values.numpy()).all()
        assert artifact.ternary[name].scale == pytest.approx(float(beta))


def test_bad_recipe_names_the_field() -> None:
    with pytest.raises(ValidationError, match="unknown difficulty 9"):
        TrainConfig(mix={9: 1.0})
    with pytest.raises(ValidationError, match="layout"):
        TrainConfig(layout="i4")


def test_curriculum_starts_with_lookups_then_mixes() -> None:
    from trifecta.edge.train import training_batches

    config = TrainConfig(steps=40, batch_size=16, lookup_share=0.5, float_share=0.25)
    assert (config.lookup_steps, config.float_steps) == (20, 10)
    batches = list(training_batches(config))
    assert len(batches) == 40
    assert all(t.difficulty == 1 for batch in batches[:20] for t in batch)
    mixed = {t.difficulty for batch in batches[20:] for t in batch}
    assert {1, 2} <= mixed and len(mixed) >= 3
    # the short-telemetry curriculum: some look-ups list only the asked sensor
    assert any(t.prompt.count("=") == 1 for batch in batches[:20] for t in batch)
    plain = config.model_copy(update={"short_telemetry": False})
    assert all(
        t.prompt.count("=") >= 3 for batch in list(training_batches(plain))[:20] for t in batch
    )
