"""The control plane's commands through `trifecta.cli.main`, and two real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import run_cli as run
from trifecta.fleet.fleetfile import dump_fleet, generate_fleet
from trifecta.fleet.plan_model import Plan


def test_capsule_crud(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            [
                "capsule",
                "add",
                "--id",
                "twin-1",
                "--domain",
                "energy",
                "--rps",
                "2",
                "--tokens",
                "512",
                "--quality",
                "0.85",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            [
                "capsule",
                "add",
                "--id",
                "gov-1",
                "--kind",
                "sovereign",
                "--domain",
                "defense",
                "--jurisdiction",
                "eu",
                "--light-share",
                "0.2",
            ],
            capsys,
        )[0]
        == 0
    )
    code, out, _ = run(["capsule", "list", "--json"], capsys)
    assert code == 0 and [c["id"] for c in json.loads(out)] == ["gov-1", "twin-1"]
    code, out, _ = run(["capsule", "show", "gov-1"], capsys)
    shown = yaml.safe_load(out)
    assert shown["jurisdiction"] == "eu" and shown["allowed_environments"] == ["edge", "sovereign"]
    code, out, _ = run(["plan", "--registry", "--json"], capsys)
    assert code == 0 and json.loads(out)["solver"]["capsules"] == 2
    assert run(["capsule", "remove", "gov-1"], capsys)[0] == 0
    code, out, err = run(["capsule", "remove", "gov-1"], capsys)
    assert code == 2 and err == "trifecta: error: capsule_id: no capsule 'gov-1'\n"
    code, _, err = run(["capsule", "add", "--id", "twin-1", "--domain", "x"], capsys)
    assert code == 2 and err.startswith("trifecta: error: id: ")


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


CAPSULE = "capsules:\n  - {id: a, name: A, kind: digital_twin, domain: x%s}\n"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["size", "--preset", "userlm-8b", "--accelerator", "tpu-v9"], "accelerator"),
        (["capsule", "add", "--id", "x", "--rps", "-1"], "demand.requests_per_s"),
        (
            ["capsule", "add", "--id", "x", "--light-share", "0.8", "--generative-share", "0.5"],
            "demand.generative_share",
        ),
        (["capsule", "add", "--id", "x", "--kind", "sovereign"], "jurisdiction"),
        (["plan", "--fleet", "MALFORMED"], "fleet"),
        (["plan", "--fleet", "NEGATIVE"], "fleet.capsules[0].demand.requests_per_s"),
        (["plan", "--topology", "BAD_TOPOLOGY"], "topology.environments[0].nodes[0].accelerator"),
        (["plan", "--phase", "prod"], "phase"),
        (["plan", "--fleet", "MISSING"], "fleet"),
        (["fleet", "generate", "--capsules", "0"], "capsules"),
        (["size"], "params"),
        (["size", "--params", "7e9", "--batch", "0"], "batch"),
        (["size", "--params", "7e9", "--bits", "0"], "bits"),  # was taken as 16
        (["size", "--preset", "userlm-8b", "--bits", "0"], "bits"),
        (["plan", "--time-limit", "0"], "time_limit"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "MALFORMED": _write(tmp_path / "m.yaml", "capsules:\n  - id: a\n    name: [oops\n"),
        "NEGATIVE": _write(tmp_path / "n.yaml", CAPSULE % ", demand: {requests_per_s: -2}"),
        "BAD_TOPOLOGY": _write(
            tmp_path / "t.yaml",
            "environments:\n  - {name: c, kind: "
            "inference, provider: p, region: r, nodes: [{name: g, "
            "accelerator: tpu-v9, count: 1}]}\n",
        ),
        "MISSING": str(tmp_path / "missing.yaml"),
    }
    code, _, err = run([files.get(a, a) for a in argv], capsys)
    assert code == 2
    assert err.startswith(f"trifecta: error: {field}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_plan_prints_tables_and_writes_json_and_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["plan", "--out", str(tmp_path / "plan.json")], capsys)
    assert code == 0
    for heading in ("Environments", "Per capsule kind", "playbook", "Replica pools", "Capsules"):
        assert heading in out
    plan = Plan.read(tmp_path / "plan.json")
    assert plan.phase == "dev" and plan.cost_per_hour <= 5
    assert run(["plan", "--phase", "pilot", "--out", str(tmp_path / "plan.yaml")], capsys)[0] == 0
    assert Plan.read(tmp_path / "plan.yaml").phase == "pilot"


def test_fleet_generate_import_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    assert (
        run(
            [
                "fleet",
                "generate",
                "--capsules",
                "40",
                "--seed",
                "4",
                "--phase",
                "pilot",
                "--out",
                str(path),
            ],
            capsys,
        )[0]
        == 0
    )
    code, out, _ = run(["fleet", "show", "--fleet", str(path)], capsys)
    assert code == 0 and "40 capsules" in out
    assert run(["fleet", "import", str(path)], capsys)[0] == 0
    code, out, _ = run(["capsule", "list", "--json"], capsys)
    assert len(json.loads(out)) == 40
    assert run(["fleet", "export", str(tmp_path / "back.json")], capsys)[0] == 0
    assert len(json.loads((tmp_path / "back.json").read_text())["capsules"]) == 40
    code, out, _ = run(["plan", "--fleet", str(path), "--phase", "pilot", "--json"], capsys)
    assert code == 0 and json.loads(out)["phase"] == "pilot"


def test_size_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["size", "--params", "70e9", "--bits", "16"], capsys)
    assert code == 0 and "h100" in out and "KV-cache shape not given" in out
    code, out, _ = run(
        [
            "size",
            "--preset",
            "userlm-8b",
            "--context",
            "8192",
            "--accelerator",
            "a100-80gb",
            "--json",
        ],
        capsys,
    )
    row = json.loads(out)[0]
    assert row["tp_degree"] == 1 and row["decode_tokens_per_s"] == pytest.approx(119.0, abs=0.1)


def _trifecta(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trifecta.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
def test_real_process_exit_codes_and_clean_json(tmp_path: Path) -> None:
    env = {**os.environ, "TRIFECTA_DATA_DIR": str(tmp_path / "data")}
    bad = _trifecta("size", "--preset", "userlm-8b", "--accelerator", "tpu-v9", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("trifecta: error: accelerator: unknown accelerator 'tpu-v9'")
    fleet = tmp_path / "fleet.yaml"
    dump_fleet(generate_fleet(400, seed=9, phase="pilot"), fleet)
    topology = Path(__file__).resolve().parents[2] / "examples/topologies/federation-large.yaml"
    good = _trifecta(
        "plan",
        "--fleet",
        str(fleet),
        "--topology",
        str(topology),
        "--phase",
        "pilot",
        "--json",
        env=env,
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["solver"]["capsules"] == 400  # nothing but JSON on stdout
