"""The edge model's decode speed and memory: the torch-free runtime against the same model in
float32 PyTorch, measured in the same run.

Each side runs in its own process (so that memory is its own, and the runtime's process never
imports torch): after a prefill of a light-task prompt, it decodes forced tokens up to the
model's block size with a KV cache, for a batch of 1 and of 8 sequences, and reports tokens/s,
the bytes of its weights and the process's peak resident memory. The PyTorch side is the same
network with each BitLinear replaced by a float32 `nn.Linear` holding W_t * beta (what a
float32 deployment of the model stores), under `torch.inference_mode`. Both are pinned to the
same thread count (`torch.set_num_threads`; numba threads and BLAS via `threadpoolctl`).

    .venv/bin/python benchmarks/edge_model.py [--model PATH] [--threads 1] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "t=41,p=17,r=63;p?"


def _timed_runs(decode: Any, reps: int) -> list[float]:
    """Seconds per decoded token of each of `reps` runs (after one untimed run)."""
    decode()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        steps = decode()
        times.append((time.perf_counter() - start) / steps)
    return times


def worker_runtime(model: Path, threads: int, reps: int, batch: int) -> dict[str, Any]:
    from trifecta.edge.runtime import EdgeRuntime

    runtime = EdgeRuntime.load(model, threads=threads)
    block = runtime.config.block_size

    def decode() -> int:
        states, prompt_ids = runtime.start([PROMPT] * batch)
        runtime.forward(states, prompt_ids)  # prefill (not timed separately)
        token = [[runtime.tokenizer.ids["5"]] for _ in range(batch)]
        steps = 0
        while len(states[0].ids) < block:
            runtime.forward(states, token)  # forced tokens: every step costs the same
            steps += 1
        return steps * batch

    float_bytes = sum(a.nbytes for a in runtime.artifact.floats.values())
    times = _timed_runs(decode, reps)
    return {
        "tokens_per_s": 1.0 / statistics.median(times),
        "seconds_per_token": times,
        "weight_bytes": runtime.weight_bytes + float_bytes,
        "kernel": runtime.kernel.name,
        "torch_imported": "torch" in sys.modules,
    }


def worker_torch(model: Path, threads: int, reps: int, batch: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from trifecta.edge.artifact import EdgeArtifact
    from trifecta.edge.model import EdgeTransformer, KVCache

    torch.set_num_threads(threads)
    artifact = EdgeArtifact.load(model)
    network = EdgeTransformer.from_artifact(artifact)
    for name, layer in network.bitlinears().items():
        parent_name, attribute = name.rsplit(".", 1)
        dense = nn.Linear(layer.in_features, layer.out_features, bias=False)
        ternary, beta = layer.quantized_weight()
        dense.weight = nn.Parameter(ternary * beta)
        setattr(network.get_submodule(parent_name), attribute, dense)
    network.eval()
    from trifecta.core.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    prompt = torch.tensor([tokenizer.encode(PROMPT, bos=True)] * batch)
    block = artifact.config.block_size

    def decode() -> int:
        with torch.inference_mode():
            caches = [KVCache() for _ in network.blocks]
            network(prompt, caches, 0)
            token = torch.full((batch, 1), tokenizer.ids["5"])
            position, steps = prompt.shape[1], 0
            while position < block:
                network(token, caches, position)
                position += 1
                steps += 1
        return steps * batch

    times = _timed_runs(decode, reps)
    return {
        "tokens_per_s": 1.0 / statistics.median(times),
        "seconds_per_token": times,
        "weight_bytes": sum(p.numel() * p.element_size() for p in network.parameters()),
    }


def worker_accuracy(model: Path, per_grade: int) -> dict[str, Any]:
    """Held-out accuracy per grade (correct, total) of the edge model and, on the same tasks,
    of the shipped cognitive tiers (through the same `LanguageModel` protocol). Each answers
    in its own format: the edge model a bare answer (6 tokens), a cognitive tier a worked
    answer that the verifier reads the final value of (`scratchpad.ANSWER_TOKENS`); cutting a
    worked answer at 6 tokens is what once put the tiers near 0% on grades 3-5 here."""
    from trifecta.cognitive.backends.shipped import shipped_tier
    from trifecta.cognitive.scratchpad import ANSWER_TOKENS
    from trifecta.cognitive.tiers import TIER_NAMES
    from trifecta.edge.evaluate import accuracy_by_difficulty
    from trifecta.edge.runtime import EdgeRuntime

    models: list[tuple[str, Any, int]] = [("edge (ternary)", EdgeRuntime.load(model), 6)]
    models += [(f"cognitive {tier}", shipped_tier(tier), ANSWER_TOKENS) for tier in TIER_NAMES]
    return {
        name: {
            str(g.difficulty): [g.correct, g.total]
            for g in accuracy_by_difficulty(language_model, per_grade=per_grade, max_new_tokens=n)
        }
        for name, language_model, n in models
    }


def worker(kind: str, model: Path, threads: int, reps: int) -> None:
    from threadpoolctl import threadpool_limits

    if kind == "accuracy":
        print(json.dumps(worker_accuracy(model, reps)))
        return
    with threadpool_limits(limits=threads):
        run = worker_runtime if kind == "runtime" else worker_torch
        results: dict[str, Any] = {f"batch{b}": run(model, threads, reps, b) for b in (1, 8)}
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--per-grade", type=int, default=100, help="held-out tasks per grade")
    parser.add_argument("--worker", choices=["runtime", "torch", "accuracy"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from trifecta.edge.assets import shipped_model_path

    model = args.model or shipped_model_path()
    if args.worker:
        worker(args.worker, model, args.threads, args.reps)
        return 0
    from rich.console import Console
    from rich.table import Table

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

    results = {}
    for kind in ("runtime", "torch", "accuracy"):
        reps = args.per_grade if kind == "accuracy" else args.reps
        argv = [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--model",
            str(model),
            "--threads",
            str(args.threads),
            "--reps",
            str(reps),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    runtime, torch_side = results["runtime"], results["torch"]
    assert not runtime["batch1"]["torch_imported"], "the runtime process imported torch"
    load = machine_load()
    table = Table("", "torch-free runtime", "float32 PyTorch", "ratio [95% CI]")
    rows, goals = [], []
    for batch in ("batch1", "batch8"):
        ours, theirs = runtime[batch]["tokens_per_s"], torch_side[batch]["tokens_per_s"]
        # speed-up = PyTorch's seconds per token / the runtime's, medians over the runs
        ratio, low, high = bootstrap_ratio(
            torch_side[batch]["seconds_per_token"], runtime[batch]["seconds_per_token"]
        )
        label = f"decode tokens/s, {batch[:5]} {batch[5:]}"
        rows.append(
            (label, f"{ours:,.0f}", f"{theirs:,.0f}", f"{ratio:.2f}x [{low:.2f}, {high:.2f}]")
        )
        goals.append(
            Goal.of(
                f"edge runtime {label}, x float32 PyTorch",
                (ratio, low, high),
                at_least=1.0,
                unit="x",
                note="the torch-free runtime is at least as fast as the dense baseline",
            )
        )
    weights = (runtime["batch1"]["weight_bytes"], torch_side["batch1"]["weight_bytes"])
    rows.append(
        (
            "model weights (bytes)",
            f"{weights[0]:,}",
            f"{weights[1]:,}",
            f"{weights[1] / weights[0]:.1f}x smaller",
        )
    )
    rss = (runtime["peak_rss_bytes"], torch_side["peak_rss_bytes"])
    rows.append(
        (
            "process peak RSS (MB)",
            f"{rss[0] / 1e6:,.0f}",
            f"{rss[1] / 1e6:,.0f}",
            f"{rss[1] / rss[0]:.1f}x smaller",
        )
    )
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    command = f"python benchmarks/edge_model.py --threads {args.threads} --reps {args.reps}"
    lines = [
        "## Edge model: the torch-free runtime against float32 PyTorch, and accuracy per grade",
        "",
        f"The edge model ({model.name}) decoding with a KV cache after a light-task",
        "prompt, forced tokens up to the block size; each side in its own process,",
        f"{args.threads} thread(s), medians of {args.reps} runs (ratio intervals: bootstrap",
        f"95% over the runs). Runtime kernel: `{runtime['batch1']['kernel']}`. PyTorch: the",
        "same network with float32 `nn.Linear` weights (W_t * beta). Timings are from a",
        f"machine shared with other engineers' jobs: {cpu_name()}; {load} at the end of the run.",
        "",
        f"Command: `{command}`",
        "",
        "| | torch-free runtime | float32 PyTorch | ratio [95% CI] |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    accuracy = results["accuracy"]
    lines += [
        "",
        f"Held-out accuracy per task grade ({args.per_grade} tasks per grade, the same tasks for",
        "every model, each tier as shipped; grades 1-2 are the light tasks the edge is",
        "offloaded). The edge model answers bare (6 tokens), a cognitive tier with its worked",
        "answer (up to 21 tokens, the verifier reads the final value). The cognitive tiers'",
        "figures on the default capsule mix, with intervals, and the escalation over them are",
        "in the entropy escalation section above.",
        "",
        "| model | 1 | 2 | 3 | 4 | 5 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, grades in accuracy.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{grades[str(g)][0] / grades[str(g)][1]:.0%}" for g in range(1, 6))
            + " |"
        )
    edge = accuracy["edge (ternary)"]
    light = [1.0] * sum(edge[g][0] for g in ("1", "2"))
    light += [0.0] * (sum(edge[g][1] for g in ("1", "2")) - len(light))
    goals.append(
        Goal.of(
            "edge model: held-out accuracy on the light grades (1-2) it is offloaded",
            bootstrap_statistic(light, np.mean),
            at_least=0.95,
            note="bootstrap 95% over the tasks",
        )
    )
    lines += ["", "Goals (each met only when its interval clears it):", "", *goals_markdown(goals)]
    Console().print("\n".join(lines[-len(goals) - 2 :]))
    if not args.no_write:
        write_section("edge_model", "\n".join(lines))
        write_results("edge_model", command, goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
