"""`trifecta tl ...`: run, check, learn, compile; a bad program is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tensorlogic"


def test_run_prints_the_queries(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["tl", "run", str(EXAMPLES / "plant.tl")], capsys)
    assert code == 0
    assert "Downstream[v1, p3]?" in out and "Alarm[s]?" in out
    assert "turbidity" in out and "boolean evaluation" in out


def test_run_reads_facts_from_another_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plant_feeds.csv").write_text("intake,v1\nv1,p3\n")
    code, out, _ = run_cli(
        ["tl", "run", str(EXAMPLES / "plant.tl"), "--facts", str(tmp_path)], capsys
    )
    assert code == 0
    assert "│ Downstream │   9x9 │       3 │" in out  # intake->v1, v1->p3, intake->p3


def test_a_bad_program_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.tl"
    bad.write_text("domain A {a}\ntensor R[A]\nR[x] = step(R[x]\nR[b]\n")
    code, _, err = run_cli(["tl", "run", str(bad)], capsys)
    assert code == 2
    assert (
        err.strip()
        == f"trifecta: error: {bad}:3:17: expected ',' or ')', found the end of the statement"
    )
    code, _, err = run_cli(["tl", "check", str(bad)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"{bad}:3:17: expected ',' or ')', found the end of the statement",
        f"{bad}:4:3: 'b' is not a symbol of domain A",
    ]
    big = tmp_path / "big.tl"
    big.write_text("domain Node 1000000\n")
    code, _, err = run_cli(["tl", "check", str(big)], capsys)
    assert (code, err.strip()) == (
        2,
        f"{big}:1:8: domain Node has 1000000 symbols, over the limit of 100000",
    )


def test_check_a_good_program(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["tl", "check", str(EXAMPLES / "family.tl")], capsys)
    assert code == 0 and "ok: 1 domains, 3 tensors, 3 equations, 2 queries" in out


def test_bad_options_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tl", "run", str(EXAMPLES / "family.tl"), "--mode", "fuzzy"], capsys)
    assert code == 2 and "mode: unknown mode 'fuzzy' (allowed: boolean, embedding)" in err
    code, _, err = run_cli(
        ["tl", "compile", str(EXAMPLES / "family.tl"), "--target", "arm"], capsys
    )
    assert code == 2 and "target: unknown target 'arm'" in err


def test_learn_fits_and_writes_the_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "w.npz"
    code, out, _ = run_cli(
        ["tl", "learn", str(EXAMPLES / "perceptron.tl"), "--steps", "200", "--out", str(out_file)],
        capsys,
    )
    assert code == 0 and "learning (central)" in out
    weights = np.load(out_file)["W"]
    # c1 = input 0 -> (1, 0); c2 = input 1 -> (0, 1); c3 = input 2 -> (1, 1)
    assert weights[0, 0] > 0 > weights[1, 0] and weights[1, 1] > 0 > weights[0, 1]
    assert weights[0, 2] > 0 and weights[1, 2] > 0


@pytest.mark.slow
def test_compile_for_both_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("iree.compiler", reason="IREE (the npu extra) is not installed")
    for target in ("host", "riscv32"):
        out_file = tmp_path / f"family.{target}.vmfb"
        code, out, _ = run_cli(
            [
                "tl",
                "compile",
                str(EXAMPLES / "family.tl"),
                "--target",
                target,
                "--out",
                str(out_file),
            ],
            capsys,
        )
        assert code == 0, out
        assert out_file.stat().st_size > 1000 and "eq2_Cousin" in out


@pytest.mark.slow
def test_learn_over_partitions_is_federated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "p.tl"
    text = (EXAMPLES / "perceptron.tl").read_text()
    program.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("example"))
        + '\nexamples Y from "y.csv"\n'
    )
    for site, rows in (("a", "c1,0,1\nc1,1,0\nc2,0,0\nc2,1,1\n"), ("b", "c3,0,1\nc3,1,1\n")):
        (tmp_path / site).mkdir()
        (tmp_path / site / "y.csv").write_text(rows)
    code, out, err = run_cli(
        [
            "tl",
            "learn",
            str(program),
            "--partition",
            str(tmp_path / "a"),
            "--partition",
            str(tmp_path / "b"),
            "--steps",
            "20",
            "--local-steps",
            "2",
            "--lr",
            "1.0",
        ],
        capsys,
    )
    assert code == 0, err
    assert "learning (federated over 2 sites)" in out
    code, _, err = run_cli(
        ["tl", "learn", str(program), "--partition", str(tmp_path / "nope")], capsys
    )
    assert code == 2 and "partition: no such directory" in err


def test_a_misspelled_query_constant_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "typo.tl"
    bad.write_text((EXAMPLES / "family.tl").read_text() + "Ancestor[anne, z]?\n")
    line = len(bad.read_text().splitlines())
    code, _, err = run_cli(["tl", "run", str(bad)], capsys)
    assert code == 2
    assert err.strip() == (
        f"trifecta: error: {bad}:{line}:10: 'anne' is not a symbol of domain Person "
        "(did you mean 'ann'?); a variable is 1 to 3 lowercase letters"
    )


def test_a_ray_partition_without_its_resource_is_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    program = str(EXAMPLES / "perceptron.tl")
    code, _, err = run_cli(
        ["tl", "learn", program, "--ray-address", "10.0.0.1:6379", "--partition", "/data/a"],
        capsys,
    )
    assert code == 2 and "partition: a Ray partition is RESOURCE=DIR, not '/data/a'" in err
