"""Memory retrieval: quality on a small labelled set, filters, and the usearch index."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.context.conftest import ServiceFactory
from trifecta.context.models import MemoryDraft, MemoryQuery, RetrieveRequest
from trifecta.context.vector_index import HNSW_ABOVE, MemoryIndex

# Four topics of the task family, five memories each; queries are labelled with their topic.
LABELLED: dict[str, list[str]] = {
    "lookup": [
        "To answer a lookup, find the sensor letter in the telemetry and return its value.",
        "Lookup prompts ask for one sensor: copy the number after its equals sign.",
        "A question mark after a single sensor name means read that sensor's reading.",
        "Telemetry lists name=value pairs; the asked sensor's value is the answer.",
        "Failed lookup: returned the wrong sensor's reading; match the letter exactly.",
    ],
    "subtraction": [
        "In chains like 41+17-23, subtract only the term right after the minus sign.",
        "Evaluate additions and subtractions strictly from left to right.",
        "A negative result is valid when the subtrahend exceeds the running total.",
        "Failed chain: treated the minus as applying to everything after it.",
        "Keep a running total and apply each signed operand in order.",
    ],
    "routing": [
        "Send light requests to a healthy edge node; fall back to the cloud if it is down.",
        "Escalate from the small to the large tier when token entropy is high.",
        "Edge offload saves cost for grade one and two tasks.",
        "A node that stops heartbeating must be skipped by the router.",
        "High entropy on the first tokens predicts a wrong answer from the small tier.",
    ],
    "sovereignty": [
        "Sovereign capsules may only run in their own jurisdiction.",
        "Never move a sovereign domain's context to a shard outside its region.",
        "Government workloads stay on sovereign or edge environments they are allowed.",
        "A capsule reads only its own domain unless another domain is shared with it.",
        "Cross-jurisdiction replication of sovereign data is refused.",
    ],
}
QUERIES: list[tuple[str, str]] = [
    ("which value do I return for t=41,p=17;p?", "lookup"),
    ("how to read a sensor from telemetry", "lookup"),
    ("order of operations for 41+17-23", "subtraction"),
    ("what does a minus sign apply to", "subtraction"),
    ("when should the request go to the large model", "routing"),
    ("cheap inference on edge devices", "routing"),
    ("where may a government capsule run", "sovereignty"),
    ("can context leave its legal region", "sovereignty"),
]


def test_retrieval_finds_the_labelled_topic(make_service: ServiceFactory, sqlite_url: str) -> None:
    service = make_service(sqlite_url)
    drafts = [
        MemoryDraft(
            title=topic, content=text, outcome="failure" if text.startswith("Failed") else "success"
        )
        for topic, texts in LABELLED.items()
        for text in texts
    ]
    service.add_memories("twin-a", drafts)
    top1 = precision = 0.0
    for query, topic in QUERIES:
        hits = service.search_memories("twin-a", MemoryQuery(query=query, k=3)).hits
        top1 += hits[0].memory.title == topic
        precision += sum(h.memory.title == topic for h in hits) / 3
    assert top1 / len(QUERIES) >= 0.85
    assert precision / len(QUERIES) >= 0.75


def test_outcome_and_recency_filters(make_service: ServiceFactory, sqlite_url: str) -> None:
    service = make_service(sqlite_url)
    service.add_memories(
        "twin-a",
        [
            MemoryDraft(
                title="old win", content="Subtract left to right in chains.", outcome="success"
            ),
            MemoryDraft(
                title="old loss",
                content="Subtracting right to left gave a wrong chain answer.",
                outcome="failure",
            ),
        ],
    )
    cutoff = time.time()
    time.sleep(0.05)
    service.add_memories(
        "twin-a",
        [
            MemoryDraft(
                title="new win", content="Chains are evaluated left to right.", outcome="success"
            ),
        ],
    )
    failures = service.search_memories(
        "twin-a", MemoryQuery(query="chain order", outcome="failure")
    )
    assert [h.memory.title for h in failures.hits] == ["old loss"]
    recent = service.search_memories("twin-a", MemoryQuery(query="chain order", since=cutoff))
    assert [h.memory.title for h in recent.hits] == ["new win"]
    both = service.search_memories(
        "twin-a", MemoryQuery(query="chain order", since=cutoff, outcome="failure")
    )
    assert both.hits == []


def test_retrieve_returns_structured_results_and_a_prompt(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    service.add_memories(
        "twin-a",
        [
            MemoryDraft(title="lookup", content=LABELLED["lookup"][0], outcome="success"),
            MemoryDraft(title="routing", content=LABELLED["routing"][1], outcome="success"),
        ],
    )
    result = service.retrieve(
        "twin-a", RetrieveRequest(query="t=41,p=17;p?", k_memories=1, token_budget=200)
    )
    assert [h.memory.title for h in result.memories] == ["lookup"]
    assert result.memories[0].memory.source.capsule_id == "twin-a"
    assert result.memories[0].memory.id in result.prompt and result.tokens <= 200


def clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit vectors around 50 centres: closer to sentence embeddings than uniform noise."""
    centres = rng.standard_normal((50, dim))
    points = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


@pytest.mark.parametrize("graph", [False, True], ids=["exact", "usearch-hnsw"])
def test_index_matches_brute_force(graph: bool) -> None:
    rng = np.random.default_rng(7)
    vectors = clustered(rng, 4000, 64)
    index = MemoryIndex(64, hnsw_above=1000 if graph else HNSW_ABOVE)
    index.upsert((f"m{i}", v) for i, v in enumerate(vectors))
    recall = 0.0
    queries = clustered(rng, 40, 64)
    for q in queries:
        truth = {f"m{i}" for i in np.argsort(-(vectors @ q))[:10]}
        found = index.search(q, 10)
        recall += len(truth & {m for m, _ in found}) / 10
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    # The exact scan is exact; the HNSW graph must still find nearly all true neighbours.
    assert recall / len(queries) >= (1.0 if not graph else 0.95)


@pytest.mark.parametrize("hnsw_above", [HNSW_ABOVE, 100], ids=["exact", "usearch-hnsw"])
def test_index_filters_and_updates(hnsw_above: int) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = MemoryIndex(16, hnsw_above=hnsw_above)
    index.upsert((f"m{i}", v) for i, v in enumerate(vectors))
    rare = {"m7", "m250"}  # a filter that only two items pass: the search widens until found
    assert {m for m, _ in index.search(vectors[0], 5, rare.__contains__)} == rare
    index.remove(["m7"])
    index.upsert([("m250", vectors[0])])
    assert index.search(vectors[0], 1)[0][0] in {"m0", "m250"} and "m7" not in index
    assert len(index) == 299
