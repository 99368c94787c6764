"""The edge node's one line a `generate` call (edge/node.py): written at info under the
request's id with its status, prompts and milliseconds; with info lines off, none of its work
is done and the answer is the same."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trifecta.core.logging import configure_logging, get_logger
from trifecta.edge import node as node_module
from trifecta.edge.node import EdgeNode, GenerateRequest, NodeConfig
from trifecta.edge.store import sha256_hex


@pytest.fixture
def node(tmp_path: Path, small_artifact_path: Path) -> Iterator[EdgeNode]:
    node = EdgeNode(NodeConfig(name="solo", data_dir=tmp_path / "solo"))
    data = small_artifact_path.read_bytes()
    assert node.put_artifact("model", "edge-model", sha256_hex(data), data).status == "stored"
    yield node
    configure_logging()  # the default configuration again, for the tests after this one


def _logged_at(level: str, monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The node's log lines at `level`, as JSON, into a buffer (a fresh logger: structlog
    keeps a logger's first configuration)."""
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    monkeypatch.setattr(node_module, "log", get_logger("trifecta.edge.node"))
    return stream


def test_the_line_names_the_request_at_info(
    node: EdgeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _logged_at("INFO", monkeypatch)
    request = GenerateRequest(prompts=["1+1?", "2+3?"], max_new_tokens=2, request_id="edge-0001")
    answer = node.serve_generate(request)
    [line] = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert answer.status == "ok" and line["event"] == "generate"
    assert line["request_id"] == "edge-0001" and line["node"] == "solo"
    assert line["status"] == "ok" and line["prompts"] == 2 and line["ms"] >= 0


def test_with_info_off_no_line_and_the_same_answer(
    node: EdgeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = GenerateRequest(prompts=["1+1?"], max_new_tokens=2, request_id="edge-0002")
    stream = _logged_at("INFO", monkeypatch)
    logged = node.serve_generate(request)
    stream = _logged_at("WARNING", monkeypatch)

    def no_scope(request_id: str) -> None:
        raise AssertionError("the line's work was done with info lines off")

    monkeypatch.setattr(node_module, "request_scope", no_scope)
    quiet = node.serve_generate(request)
    assert stream.getvalue() == ""
    assert quiet.status == "ok" and quiet.generations == logged.generations
