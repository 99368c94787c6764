"""MiniLM's CPU a text at the loop's shapes, ours against the baselines a skeptic names, and
each candidate's vectors against float32's.

Timed, one torch thread, each call's process CPU (ONNX Runtime on one intra-op thread too),
candidates interleaved in a shuffled order every round so that the machine's load falls on
all of them alike:
  - sentence-transformers' own `encode`, float32 (baseline);
  - ONNX Runtime, float32 and dynamic int8 (baselines): the model exported here from the shipped
    weights (torch.onnx), quantised by `onnxruntime.quantization.quantize_dynamic` with the
    settings of sentence-transformers' `export_dynamic_quantized_onnx_model(...,
    "avx512_vnni")` (int8 weights per tensor, uint8 activations, full range). That function
    itself needs optimum-onnx, which requires transformers < 4.58 (we run 5.x), so its
    quantiser is called directly. Its best int8 as a skeptic would set it: weights per
    channel, and per channel with the sensitive MatMuls (the feed-forward pair and the value
    projection of every layer: each cost recall alone when probed) kept float32. Every session
    at graph optimisation level "all" on one intra-op thread. The fastest ONNX Runtime
    candidate whose recall@10 reaches the goal is the equal-recall baseline;
  - ours (core/embeddings.py): float32; float32 under bfloat16 autocast (the learner's path
    before); torch's dynamic int8 of the Linear layers (fbgemm: VNNI here, AVX2 elsewhere),
    eager and (per channel, x86 engine) traced and frozen; bfloat16 weights run eagerly;
    bfloat16 weights with the forward traced and frozen once by TorchScript
    (core/embed_compiled.py), with plain Linears (shipped earlier), with oneDNN-packed weights
    (shipped before); MiniLM written out as one scripted, frozen module with fused operators
    (core/embed_fused.py), on oneDNN-packed weights (the shipped path where the CPU has
    bfloat16) and on plain Linears (its fallback where oneDNN cannot pack); the same module
    with int8 Linears (core/embed_int8.py: SmoothQuant factors from calibration prompts,
    weights per channel, activations per token, oneDNN's int8 kernels), the candidate
    that would replace the shipped path if it were faster at recall@10 >= 0.98. Built before
    timing; the seconds and memory the shipped one took are reported. No oneDNN graph fusion row any more: its switch is
    process-wide, and the profiling executor re-optimises the other traced rows' graphs at
    each new shape, so it reached them too (its last row: 5.23 ms a text over the query mix
    against the plain trace's 4.35).
Shapes: the loop's query calls (1, 2, 4, 8 texts; logged over a 300-request run: 138, 6, 12
and 18 forwards) and the learner's batches (16 and 32 texts), of the task family's prompts.

Quality over a few thousand texts: the task family's prompts (the loop's queries, and the
memories keyed by them) and the memory texts the learner composes from trajectories. Cosine
of each candidate's vector to float32's; recall@10: queries embedded by the candidate
against an index embedded in float32 (what an existing data directory holds), against
float32's own ten nearest.

    .venv/bin/python benchmarks/embeddings.py [--rounds 20] [--texts 3000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from rich.progress import track

from benchmarks._report import (
    Goal,
    bootstrap_ratio,
    bootstrap_statistic,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.context.memory import memory_text, structured_draft
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.embed_compiled import CompiledEncoder, pooled_encoder
from trifecta.core.embed_fused import FusedEncoder
from trifecta.core.embed_int8 import ALPHA, CALIBRATION_TEXTS, Int8Encoder, int8_support
from trifecta.core.embeddings import MiniLMEmbedder, native_bfloat16
from trifecta.core.tasks import generate_tasks

Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, 384) unit vectors
QUERY_MIX = {1: 138, 2: 6, 4: 12, 8: 18}  # forwards of each size in a 300-request loop run
LEARNER_SHAPES = (16, 32)
SHIPPED = "ours, bfloat16, fused scripted module, oneDNN-packed weights (shipped)"
FUSED_PLAIN = "ours, bfloat16, fused scripted module, plain Linears (its fallback)"
PACKED_BEFORE = "ours, bfloat16, TorchScript + oneDNN-packed weights (shipped before)"
TRACED_BEFORE = "ours, bfloat16, TorchScript traced + frozen (shipped earlier)"
EAGER_BF16 = "ours, bfloat16 weights, eager (shipped earlier)"
ENCODE = "sentence-transformers encode, float32"
ONNX = "ONNX Runtime dynamic int8"
ONNX_PREFIX = "ONNX Runtime"
AUTOCAST = "ours, float32 + bfloat16 autocast (learner before)"
INT8 = "ours, int8 SmoothQuant (weights per channel, activations per token), fused scripted module (candidate)"
RECALL_GOAL, QUERY_GOAL, LEARNER_GOAL = 0.98, 0.5, 1.0
console = Console()


def corpus(count: int, seed: int = 11) -> tuple[list[str], list[str]]:
    """(prompts, memory texts), about half each: the task family's prompts over its domains
    and grades, and memory texts composed as the learner does without a language model."""
    domains = ["energy", "plant", "grid", "water", "health", None]
    tasks = [
        t
        for i, d in enumerate(domains)
        for t in generate_tasks(count // len(domains) + 1, seed=seed + i, domain=d)
    ]
    rng = random.Random(seed)
    prompts = list(dict.fromkeys(t.prompt for t in tasks))[: count // 2]
    memories = []
    for t in tasks[: count - len(prompts)]:
        right = rng.random() < 0.7
        layer, tier = rng.choice(
            [("edge", "node-1"), ("cognitive", "small"), ("cognitive", "large")]
        )
        trajectory = Trajectory(
            capsule_id="dt-energy-0000",
            task_kind=t.kind,
            difficulty=t.difficulty,
            prompt=t.prompt,
            answer=t.answer if right else str(rng.randint(0, 300)),
            outcome="success" if right else "failure",
            judge="verifier",
            verdict_detail=None if right else f"expected {t.answer}",
            steps=[TrajectoryStep(layer=layer, tier=tier, mean_entropy=rng.random())],
        )
        memories.append(memory_text(structured_draft(trajectory)))
    return prompts, memories


def onnx_runtime(embedder: MiniLMEmbedder, folder: Path) -> dict[str, Embed]:
    """ONNX Runtime sessions of the shipped weights exported to ONNX (transformer, mean
    pooling, L2 norm in one graph): float32; dynamic int8 as sentence-transformers'
    "avx512_vnni" config does; per channel; per channel with the sensitive MatMuls float32."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The shipped module's BERT, pooling and normalisation in one graph (float32 weights).
    encoder = pooled_encoder(embedder.model[0].auto_model)  # type: ignore[index]

    plain, quantised = folder / "minilm.onnx", folder / "minilm_int8.onnx"
    example = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        encoder,
        (example, example),
        str(plain),
        input_names=["ids", "mask"],
        output_names=["vectors"],
        dynamic_axes={"ids": axes, "mask": axes},
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(
        plain, quantised, weight_type=QuantType.QInt8, per_channel=False, reduce_range=False
    )
    channel, kept = folder / "minilm_int8_channel.onnx", folder / "minilm_int8_kept.onnx"
    quantize_dynamic(
        plain, channel, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False
    )
    # The feed-forward pair (intermediate, output) and the value projection of each layer.
    sensitive = [
        node.name
        for node in onnx.load(str(plain)).graph.node
        if node.op_type == "MatMul"
        and ("/value/" in node.name or ("/dense/" in node.name and "/attention/" not in node.name))
    ]
    assert len(sensitive) == 18, f"3 MatMuls a layer expected, found {len(sensitive)}"
    quantize_dynamic(
        plain,
        kept,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        nodes_to_exclude=sensitive,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    tokenizer = embedder.model.tokenizer  # type: ignore[attr-defined]

    def session(path: Path) -> Embed:
        runner = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def embed(texts: list[str]) -> np.ndarray:
            # Batches of 64 padded to their longest, as encode: the quality pass's 1,500
            # memories in one batch took several GB of session arena at once.
            vectors = []
            for start in range(0, len(texts), 64):
                batch = tokenizer(
                    texts[start : start + 64],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="np",
                )
                feeds = {
                    "ids": batch["input_ids"].astype(np.int64),
                    "mask": batch["attention_mask"],
                }
                vectors.append(np.asarray(runner.run(None, feeds)[0], dtype=np.float32))
            return np.concatenate(vectors)

        return embed

    return {
        "ONNX Runtime float32": session(plain),
        ONNX: session(quantised),
        "ONNX Runtime dynamic int8, per channel": session(channel),
        "ONNX Runtime dynamic int8, per channel, feed-forward and value MatMuls float32": session(
            kept
        ),
    }


def candidates(folder: Path) -> dict[str, Embed]:
    import torch

    float32 = MiniLMEmbedder("float32")
    model = float32.model

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False),  # type: ignore[attr-defined]
            dtype=np.float32,
        )

    def autocast(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return float32.embed(texts)

    int8 = MiniLMEmbedder("float32")
    int8._model[0] = torch.ao.quantization.quantize_dynamic(
        int8._model[0],
        {torch.nn.Linear},
        dtype=torch.qint8,
    )
    # Per channel, x86 engine (fbgemm's VNNI kernels, oneDNN's for some shapes), traced and
    # frozen as the shipped path is: int8 at its best in torch on this CPU.
    int8_traced = MiniLMEmbedder("float32", engine="torchscript")
    torch.ao.quantization.quantize_dynamic(
        int8_traced.model[0].auto_model,  # type: ignore[index]
        {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
        dtype=torch.qint8,
        inplace=True,
    )
    int8_traced.compiled = CompiledEncoder(int8_traced.model[0].auto_model)  # type: ignore[index]
    int8_traced.compiled.compile_now()
    found: dict[str, Embed] = {
        ENCODE: encode,
        **onnx_runtime(float32, folder),
        "ours, float32": float32.embed,
        AUTOCAST: autocast,
        "ours, torch dynamic int8 (fbgemm)": int8.embed,
        "ours, torch dynamic int8 per channel, TorchScript traced + frozen": int8_traced.embed,
    }
    if native_bfloat16():  # bfloat16 weights are shipped only here (core/embeddings.py)
        found[EAGER_BF16] = MiniLMEmbedder("bfloat16", engine="eager").embed
        before_packing = MiniLMEmbedder("bfloat16", engine="torchscript")
        before_packing.compiled = CompiledEncoder(
            before_packing.model[0].auto_model,  # type: ignore[index]
            prepack=False,
        )
        before_packing.compiled.compile_now()
        found[TRACED_BEFORE] = before_packing.embed
        packed_trace = MiniLMEmbedder("bfloat16", engine="torchscript")
        assert packed_trace.compiled is not None
        packed_trace.compiled.compile_now()
        found[PACKED_BEFORE] = packed_trace.embed
        fallback = MiniLMEmbedder("bfloat16", engine="fused")
        fallback.compiled = FusedEncoder(fallback.model[0].auto_model, prepack=False)  # type: ignore[index]
        fallback.compiled.compile_now()
        found[FUSED_PLAIN] = fallback.embed
        shipped = MiniLMEmbedder("bfloat16")
        assert isinstance(shipped.compiled, FusedEncoder), "auto: the fused module for bfloat16"
        before = anonymous_resident_mb(trim=True)
        COMPILE_COST["seconds"] = shipped.compiled.compile_now()
        COMPILE_COST["mb"] = anonymous_resident_mb(trim=True) - before
        COMPILE_COST["packed"] = float(shipped.compiled.packed)
        found[SHIPPED] = shipped.embed
    if int8_support() is None:  # oneDNN's int8 kernels (VNNI or AMX here, AVX2 elsewhere)
        smooth = MiniLMEmbedder(engine="int8")
        assert isinstance(smooth.compiled, Int8Encoder)
        INT8_COST["seconds"] = smooth.compiled.compile_now()
        INT8_COST["calibration"] = smooth.compiled.calibration_seconds
        found[INT8] = smooth.embed
    return found


COMPILE_COST: dict[
    str, float
] = {}  # the shipped engine's trace and freeze: seconds, MB, Linears packed
INT8_COST: dict[str, float] = {}  # the int8 candidate's build: seconds, of them calibration


def anonymous_resident_mb(trim: bool) -> float:
    """This process's anonymous resident memory, after handing glibc's free pages back."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if trim and name:
        getattr(ctypes.CDLL(name), "malloc_trim", lambda _pad: 0)(0)
    fields = Path("/proc/self/statm").read_text().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_ms(embed: Embed, texts: list[str]) -> float:
    start = time.process_time()
    embed(texts)
    return (time.process_time() - start) * 1e3


def timings(
    found: dict[str, Embed], pool: list[str], rounds: int
) -> dict[str, dict[int, list[float]]]:
    """CPU ms a text per candidate and batch size, one sample per round; each round draws
    new texts from the pool and runs the candidates in a shuffled order."""
    rng = random.Random(5)
    sizes = [*QUERY_MIX, *LEARNER_SHAPES]
    out: dict[str, dict[int, list[float]]] = {name: {s: [] for s in sizes} for name in found}
    for embed in found.values():  # warm every shape once (oneDNN / ORT first calls)
        for size in sizes:
            embed(pool[:size])
    for _ in track(range(rounds), description="timing rounds", console=console):
        for size in sizes:
            texts = rng.sample(pool, size)
            for name in rng.sample(list(found), len(found)):
                out[name][size].append(cpu_ms(found[name], texts) / size)
    return out


def query_mix(samples: dict[int, list[float]]) -> list[float]:
    """Per round: CPU ms a text over the loop's query calls (each size weighted by its count
    of forwards and its texts)."""
    texts = {size: count * size for size, count in QUERY_MIX.items()}
    total = sum(texts.values())
    rounds = len(samples[1])
    return [sum(samples[s][r] * texts[s] for s in QUERY_MIX) / total for r in range(rounds)]


def quality(
    found: dict[str, Embed], prompts: list[str], memories: list[str], queries: int
) -> dict[str, dict[str, float | tuple[float, float, float]]]:
    """Cosine to float32 over every text; recall@10 of `queries` held-back prompts against an
    index (the other prompts and the memories) embedded in float32."""
    reference = found["ours, float32"]
    asked, indexed = prompts[:queries], prompts[queries:] + memories
    exact_q, index = reference(asked), reference(indexed)
    exact_m = reference(memories)
    truth = np.argsort(-(exact_q @ index.T), axis=1)[:, :10]
    report: dict[str, dict[str, float | tuple[float, float, float]]] = {}
    for name, embed in found.items():
        ours_q, ours_m = embed(asked), embed(memories)
        cosines = np.concatenate([(ours_q * exact_q).sum(1), (ours_m * exact_m).sum(1)])
        top = np.argsort(-(ours_q @ index.T), axis=1)[:, :10]
        hits = [len(set(a) & set(b)) / 10 for a, b in zip(truth, top, strict=True)]
        report[name] = {
            "recall": bootstrap_statistic(hits, np.mean),
            "cos_mean": float(cosines.mean()),
            "cos_min": float(cosines.min()),
        }
    return report


def equal_recall_baseline(
    found: dict[str, Embed],
    times: dict[str, dict[int, list[float]]],
    scores: dict[str, dict[str, float | tuple[float, float, float]]],
) -> str | None:
    """The ONNX Runtime candidate with the least median CPU over the query mix among those
    whose recall@10 reaches RECALL_GOAL: the baseline at the shipped path's quality."""
    eligible = []
    for name in found:
        recall = scores[name]["recall"]
        assert isinstance(recall, tuple)
        if name.startswith(ONNX_PREFIX) and recall[0] >= RECALL_GOAL:
            eligible.append((float(np.median(query_mix(times[name]))), name))
    return min(eligible)[1] if eligible else None


def query_goal(
    claim: str, times: dict[str, dict[int, list[float]]], shipped: str, baseline: str | None
) -> list[Goal]:
    """The shipped path's CPU over the query mix at most the baseline's; none where this CPU
    has no such row (no native bfloat16, or no ONNX Runtime candidate at the recall goal)."""
    if baseline is None or baseline not in times:
        return []
    ratio = bootstrap_ratio(query_mix(times[shipped]), query_mix(times[baseline]))
    return [Goal.of(claim, ratio, at_most=1.0, unit="x")]


def equal_recall_line(
    scores: dict[str, dict[str, float | tuple[float, float, float]]], equal_recall: str | None
) -> str:
    """Why the equal-recall row: what recall each ONNX Runtime int8 row bought its speed with."""
    recalls = []
    for name, score in scores.items():
        recall = score["recall"]
        assert isinstance(recall, tuple)
        if name.startswith(ONNX):
            recalls.append(f"{name.removeprefix(ONNX).strip(', ') or 'per tensor'} {recall[0]:.3f}")
    return (
        "The int8 rows buy their speed with recall: ONNX Runtime dynamic int8's recall@10 is "
        + "; ".join(recalls)
        + f", where the goal is {RECALL_GOAL}. So the fair ONNX Runtime baseline at the shipped "
        "path's quality is the fastest of its rows whose recall@10 reaches the goal (here: "
        f"{equal_recall or 'none'}); the per-tensor int8 row stays as the baseline it was."
    )


INT8_LINE = (
    "The int8 candidate (core/embed_int8.py, `TRIFECTA_EMBED_ENGINE=int8`, never picked by "
    f"auto) is SmoothQuant as published: factors s_j = max|X_j|^{ALPHA} / max|W_j|^{1 - ALPHA} "
    f"from {CALIBRATION_TEXTS} seeded task prompts, weights int8 per channel, activations int8 per token at each call "
    "(the second feed-forward's input shifted by GELU's floor and quantised unsigned), layer "
    "norms, attention and the residual stream float32, oneDNN's int8 kernels (AMX here). It "
    "would replace the shipped path only if its recall@10 interval cleared 0.98 and its CPU "
    "over the query mix were below the shipped path's beyond noise (the last rows)."
)


def int8_goals(
    times: dict[str, dict[int, list[float]]],
    scores: dict[str, dict[str, float | tuple[float, float, float]]],
    shipped: str,
) -> list[Goal]:
    """What the int8 candidate would need to replace the shipped path: recall@10 at the
    goal, and less CPU than the shipped path and than ONNX Runtime's int8 over the query mix."""
    if INT8 not in times:
        return []
    recall = scores[INT8]["recall"]
    assert isinstance(recall, tuple)
    claim = "query embedding CPU a text over the loop's query calls, int8 SmoothQuant candidate / "
    return [
        Goal.of(
            "recall@10 of the int8 SmoothQuant candidate vs float32", recall, at_least=RECALL_GOAL
        ),
        *query_goal(claim + "shipped", times, INT8, shipped),
        *query_goal(claim + "ONNX Runtime dynamic int8", times, INT8, ONNX),
    ]


def compile_line() -> str:
    if not COMPILE_COST:
        return "No TorchScript row: this CPU has no native bfloat16, so the shipped path is float32 eager."
    packed = "oneDNN-packed" if COMPILE_COST["packed"] else "plain (oneDNN could not pack)"
    return (
        f"The shipped engine built, scripted and froze the fused MiniLM ({packed} weights) "
        f"once in {COMPILE_COST['seconds']:.2f} s of wall time, "
        f"{COMPILE_COST['mb']:.0f} MB more anonymous memory afterwards; one module serves every "
        "shape (a server does this at its first embedding)."
    ) + (
        f" The int8 candidate calibrated and built once in {INT8_COST['seconds']:.2f} s "
        f"({INT8_COST['calibration']:.2f} s of it the calibration forwards over 128 prompts)."
        if INT8_COST
        else " No int8 row: oneDNN's int8 Linear did not run on this CPU or build."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per shape")
    parser.add_argument("--texts", type=int, default=3000, help="texts for the quality pass")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    command = (
        f".venv/bin/python benchmarks/embeddings.py --rounds {args.rounds} --texts {args.texts}"
    )
    load_before = machine_load()
    prompts, memories = corpus(args.texts)
    with tempfile.TemporaryDirectory() as folder:
        console.print("exporting MiniLM to ONNX and quantising it (the int8 baseline)")
        found = candidates(Path(folder))
        times = timings(found, prompts, args.rounds)
        console.print(f"quality over {len(prompts) + len(memories)} texts")
        scores = quality(found, prompts, memories, queries=min(500, len(prompts) // 4))
    shipped = SHIPPED if SHIPPED in found else "ours, float32"
    sizes = [*QUERY_MIX, *LEARNER_SHAPES]
    lines = [
        "| candidate | "
        + " | ".join(f"{s} text{'s' if s > 1 else ''}" for s in sizes)
        + " | query mix | cosine mean / min | recall@10 vs float32 |",
        "|---|" + "---:|" * (len(sizes) + 3),
    ]
    for name in found:
        cells = [f"{np.median(times[name][s]):.2f}" for s in sizes]
        mix = bootstrap_ratio(query_mix(times[name]), query_mix(times[ENCODE]))
        recall = scores[name]["recall"]
        assert isinstance(recall, tuple)
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {np.median(query_mix(times[name])):.2f} ({mix[0]:.2f}x [{mix[1]:.2f}, {mix[2]:.2f}])"
            + f" | {scores[name]['cos_mean']:.5f} / {scores[name]['cos_min']:.5f}"
            + f" | {recall[0]:.3f} [{recall[1]:.3f}, {recall[2]:.3f}] |"
        )
    recall = scores[shipped]["recall"]
    assert isinstance(recall, tuple)
    equal_recall = equal_recall_baseline(found, times, scores)
    goals = [
        Goal.of(
            "query embedding CPU a text over the loop's query calls, shipped / sentence-transformers encode float32",
            bootstrap_ratio(query_mix(times[shipped]), query_mix(times[ENCODE])),
            at_most=QUERY_GOAL,
            unit="x",
        ),
        Goal.of(
            "learner batch of 32: CPU a text, shipped / float32 under bfloat16 autocast (the learner before)",
            bootstrap_ratio(times[shipped][32], times[AUTOCAST][32]),
            at_most=LEARNER_GOAL,
            unit="x",
        ),
        *query_goal(
            "query embedding CPU a text over the loop's query calls, shipped / ONNX Runtime dynamic int8",
            times,
            shipped,
            ONNX,
        ),
        *query_goal(
            "query embedding CPU a text over the loop's query calls, shipped / the fastest ONNX "
            f"Runtime candidate at recall@10 of at least {RECALL_GOAL} (equal recall)",
            times,
            shipped,
            equal_recall,
        ),
        *query_goal(
            "query embedding CPU a text over the loop's query calls, shipped / bfloat16 traced + frozen, oneDNN-packed Linears (shipped before)",
            times,
            shipped,
            PACKED_BEFORE,
        ),
        *query_goal(
            "query embedding CPU a text over the loop's query calls, shipped / bfloat16 traced + frozen, plain Linears (shipped earlier)",
            times,
            shipped,
            TRACED_BEFORE,
        ),
        *query_goal(
            "query embedding CPU a text over the loop's query calls, shipped / bfloat16 eager (shipped before)",
            times,
            shipped,
            EAGER_BF16,
        ),
        Goal.of(
            "recall@10 of the shipped path vs float32 (index in float32)",
            recall,
            at_least=RECALL_GOAL,
        ),
        *int8_goals(times, scores, shipped),
    ]
    write_results("embeddings", command, goals)
    load_after = machine_load()
    write_section(
        "embeddings",
        "\n".join(
            [
                "## MiniLM embeddings at the loop's shapes (`benchmarks/embeddings.py`)",
                "",
                f"Command: `{command}`. Machine: {cpu_name()}; {load_before} at the start, "
                f"{load_after} at the end (the machine is shared with other engineers' jobs: "
                "absolute figures move with the load, the interleaved ratios less). One torch "
                "thread; CPU ms a text, median of the rounds, each call's process CPU; "
                f"{args.rounds} rounds, candidates shuffled within each. Baselines: "
                "sentence-transformers' `encode` (float32) and ONNX Runtime, float32 and dynamic int8 "
                "(the shipped weights exported here; `quantize_dynamic` with sentence-"
                "transformers' avx512_vnni settings, since its own export needs optimum-onnx, "
                "which cannot be installed beside transformers 5). Query mix: the loop's "
                "query calls (1, 2, 4, 8 texts, weighted as a 300-request run made them), "
                "ratio to `encode` with its bootstrap interval. Quality: "
                f"{len(prompts) + len(memories)} texts (task-family prompts and memory "
                "texts); recall@10 of held-back prompts against a float32 index of the rest. "
                "ONNX Runtime's own best int8 is here too: per channel, and per channel with the "
                "feed-forward and value MatMuls (18 of 36) kept float32, every session at graph "
                "optimisation level all, one thread. " + equal_recall_line(scores, equal_recall),
                "",
                compile_line(),
                "",
                INT8_LINE,
                "",
                *lines,
                "",
                *goals_markdown(goals),
            ]
        ),
    )
    for line in lines:
        console.print(line, markup=False, highlight=False)
    for g in goals:
        console.print(f"{g.claim}: {g.figure:.3f} {g.interval(3)} -> {g.verdict()}", markup=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
