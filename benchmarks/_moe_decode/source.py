"""What the generative model is measured beside: the vendored AR checkpoint it was converted
from (greedy, on the same held-out tasks) and the cognitive tiers' own evaluations."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from benchmarks._moe_decode.modes import served_config

if TYPE_CHECKING:
    from trifecta.generative.decoding import Decoder


def shipped_source() -> str:
    """The vendored AR checkpoint the shipped model was converted from (its recipe's first
    stage names it; every stage carries the same `source`)."""
    from trifecta.generative.assets import RECIPE_FILE, asset_dir

    return str(json.loads((asset_dir() / RECIPE_FILE).read_text())["source"])


def shipped_granularity() -> int:
    """FFN shards per expert group of the shipped model (`assets.shipped_granularity`)."""
    from trifecta.generative.assets import shipped_granularity as granularity

    return granularity()


def ar_source_accuracy(per_grade: int, source: str) -> list[float]:
    """Greedy answers of the vendored AR checkpoint the model was converted from (a cognitive
    tier with Canon layers; its worked answers are read after the last `=`, as the cognitive
    layer reads them)."""
    import torch
    from transformers import AutoModelForCausalLM

    import trifecta.cognitive.canon_llama  # noqa: F401  (registers the tier's model type)
    from trifecta.core.tokenizer import CharTokenizer
    from trifecta.generative.assets import ar_checkpoint_dir
    from trifecta.generative.evaluate import heldout_tasks
    from trifecta.generative.sequences import answer_of

    folder = ar_checkpoint_dir(source)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer, accuracies = CharTokenizer(), []
    for tasks in heldout_tasks(per_grade).values():
        correct = 0
        for task in tasks:
            ids = torch.tensor([tokenizer.encode(task.prompt, bos=True)])
            with torch.no_grad():
                out = model.generate(
                    ids, max_new_tokens=21, do_sample=False, eos_token_id=2, pad_token_id=0
                )
            text = tokenizer.decode([i for i in out[0, ids.shape[1] :].tolist() if i < 46])
            correct += answer_of(text) == task.answer
        accuracies.append(correct / len(tasks))
    return accuracies


def cognitive_tiers() -> dict[str, list[float]]:
    """The cognitive tiers' own held-out accuracy per grade (200 tasks per grade, their
    `training.json`, measured by `trifecta cognitive eval`), read as files."""
    from importlib import resources

    rows = {}
    for tier in ("small", "medium", "large"):
        path = resources.files("trifecta") / "assets" / "cognitive" / tier / "training.json"
        accuracy = json.loads(path.read_text())["heldout_accuracy"]
        rows[f"cognitive {tier} tier (its own evaluation, 200 per grade)"] = [
            accuracy[str(g)] for g in range(1, 6)
        ]
    return rows


def beside_source(decoder: Decoder, per_grade: int, source: str) -> list[str]:
    """Accuracy per grade of the served decoding and, on the same held-out tasks, of the AR
    checkpoint it was converted from (greedy). The cognitive tiers are evaluated by their own
    layer (`trifecta cognitive eval`): they now write worked answers longer than a bare-answer
    budget, so a shared evaluation would truncate them."""
    from trifecta.core.tasks import DIFFICULTIES
    from trifecta.generative.evaluate import evaluate, heldout_tasks

    rows = {
        f"AR source (`{source}`, the tier as converted, vendored)": ar_source_accuracy(
            per_grade, source
        ),
        "generative (MoE diffusion, served decoding)": [
            g.accuracy for g in evaluate(decoder, heldout_tasks(per_grade), served_config()).grades
        ],
        **cognitive_tiers(),
    }
    lines = [
        "| model | " + " | ".join(str(g) for g in DIFFICULTIES) + " |",
        "|---|" + "---:|" * len(DIFFICULTIES),
    ]
    for name, accs in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.1%}" for a in accs) + " |")
    return lines
