"""`trifecta generative ...`: bad input is one line naming the field, exit 2."""

from __future__ import annotations

import pytest

from tests.generative.conftest import mask_experts, shipped_shape
from tests.support import run_cli


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["generative", "mask", "show", "nobody"], "capsule"),
        (["generative", "eval", "--capsule", "nobody", "--per-grade", "1"], "capsule"),
        (["generative", "generate", "--steps", "0", "41+17?"], "steps"),
        (["generative", "mask", "set", "c1", "--experts", "0,1,8"], "experts"),
        (["generative", "mask", "set", "c1", "--experts", "3"], "experts"),
        (["generative", "mask", "set", "c1", "--experts", "a,b"], "experts"),
        (["generative", "biases", "c1", "--revert", "5"], "revert"),
        (["generative", "generate", "41*17?"], "prompt"),
        (["generative", "mask", "learn", "c1", "--rule", "share"], "rule"),
        (["generative", "mask", "learn", "c1", "--check-tasks", "0"], "check_tasks"),
        (["generative", "mask", "learn", "c1", "--tolerance", "1.5"], "tolerance"),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{field}:" in lines[0]


def test_masks_and_biases_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    layers, _, top_k = shipped_shape()
    experts = mask_experts(top_k)
    given = ",".join(map(str, experts))
    assert run_cli(["generative", "mask", "set", "c1", "--experts", given], capsys)[0] == 0
    code, out, _ = run_cli(["generative", "mask", "show", "c1"], capsys)
    assert code == 0 and str([experts] * layers) in out
    code, out, _ = run_cli(["generative", "generate", "--capsule", "c1", "41+17?"], capsys)
    assert code == 0 and f'"experts_active": {len(experts) * layers}' in out
    code, out, _ = run_cli(["generative", "biases", "c1"], capsys)
    assert code == 0 and "load: 1 requests" in out
    code, out, _ = run_cli(["generative", "biases", "c1", "--revert", "0"], capsys)
    assert code == 0 and "version 2" in out
    assert run_cli(["generative", "mask", "clear", "c1"], capsys)[0] == 0


def test_mask_learn_verified(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    torch.set_num_threads(1)  # 16 checks of small batches: threads only contend on a busy machine
    argv = ["generative", "mask", "learn", "c3", "--check-tasks", "20", "--domain", "energy"]
    code, out, _ = run_cli(argv, capsys)
    out = " ".join(out.split())  # the console may wrap the line
    assert code == 0 and "verified successes of 20 energy-domain tasks" in out
    assert "95% bound on the share it loses" in out  # what the check certifies
    code, out, _ = run_cli(["generative", "mask", "show", "c3"], capsys)
    assert code == 0 and "learned experts" in out
