"""`trifecta context ...` commands, run through the real entry point (`trifecta.cli.main`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.context.conftest import register_capsules
from trifecta.cli import main
from trifecta.core.settings import get_settings


@pytest.fixture(autouse=True)
def capsules() -> None:
    register_capsules(get_settings().db_url)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, body: object) -> str:
    path.write_text(json.dumps(body))
    return str(path)


def test_apply_learn_and_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    delta = write(
        tmp_path / "delta.json",
        {
            "ops": [
                {
                    "op": "ADD",
                    "op_id": "a1",
                    "section": "strategies",
                    "content": "Read the sensor first.",
                }
            ]
        },
    )
    code, out, _ = run(capsys, "context", "apply", "twin-a", delta, "--json")
    assert code == 0
    bullet = json.loads(out)["added"][0]
    trajectory = write(
        tmp_path / "t.json",
        {
            "id": "traj-cli",
            "capsule_id": "twin-a",
            "prompt": "t=4,p=9;p?",
            "answer": "9",
            "outcome": "success",
            "judge": "verifier",
            "task_kind": "lookup",
            "bullet_ids": [bullet],
        },
    )
    code, out, _ = run(capsys, "context", "learn", trajectory)
    assert code == 0 and "1 tags, 1 memories" in out and "reflector: outcome_signal" in out
    code, out, _ = run(capsys, "context", "playbook", "twin-a", "--json")
    assert json.loads(out)["bullets"][0]["helpful"] == 1
    code, out, _ = run(capsys, "context", "playbook", "twin-a", "--render", "--budget", "60")
    assert bullet in out
    code, out, _ = run(capsys, "context", "memory", "search", "twin-a", "sensor lookup")
    assert code == 0 and "[success]" in out and "lookup solved" in out


def test_memory_add_and_shards(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = write(
        tmp_path / "m.json",
        {"items": [{"title": "grid", "content": "Grid operands run high.", "outcome": "success"}]},
    )
    assert run(capsys, "context", "memory", "add", "twin-b", items)[1].strip() == (
        "1 added, 0 reinforced, 0 exists"
    )
    assert run(capsys, "context", "shard", "share", "grid", "--with", "plant")[0] == 0
    code, out, _ = run(capsys, "context", "memory", "search", "twin-a", "grid", "--domain", "grid")
    assert code == 0 and "grid" in out
    target = f"sqlite:///{tmp_path / 'grid-shard.db'}"
    monkeypatch.setenv("TRIFECTA_SHARD_URLS", json.dumps({"inference": target}))
    get_settings.cache_clear()
    code, out, _ = run(capsys, "context", "shard", "places")
    assert code == 0 and f"inference (inference): {target}" in out
    code, out, _ = run(capsys, "context", "shard", "move", "grid", "--to", "inference")
    assert code == 0 and "verified" in out
    code, out, _ = run(capsys, "context", "shard", "list")
    assert f"grid: {target} (inference)" in out and "shared: grid -> plant" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["context", "playbook", "twin-b", "--domain", "plant"],
            "trifecta: error: domain: domain 'plant' is not shared with capsule 'twin-b' "
            "(domain 'grid')",
        ),
        (["context", "playbook", "ghost"], "trifecta: error: capsule_id: no capsule 'ghost'"),
        (
            ["context", "apply", "twin-a", "missing.json"],
            "trifecta: error: delta_file: no such file: missing.json",
        ),
        (
            ["context", "memory", "search", "twin-a", "x", "--outcome", "maybe"],
            "trifecta: error: outcome:",
        ),
        (
            [
                "context",
                "shard",
                "move",
                "gov",
                "--to",
                "inference",
            ],
            "trifecta: error: to: capsule 'gov-1' may not keep context in 'inference'",
        ),
        (
            ["context", "shard", "move", "gov", "--to", "sqlite:///x.db"],
            "trifecta: error: to: 'sqlite:///x.db' is not a configured place",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(message)


def test_malformed_delta_file_names_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(
        tmp_path / "bad.json",
        {"ops": [{"op": "TAG", "op_id": "t", "bullet_id": "x", "tag": "helpful"}]},
    )
    code, _, err = run(capsys, "context", "apply", "twin-a", bad)
    assert code == 2 and err.startswith("trifecta: error: ops[0].TAG.bullet_id:")
