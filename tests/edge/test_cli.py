"""`trifecta edge ...`: the commands work, and bad input is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_cli as run


def test_kernels_lists_every_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["edge", "kernels"], capsys)
    assert code == 0
    for name in ("vnni", "avx2", "portable"):
        assert name in out


def test_info_generate_and_eval(
    small_artifact_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["edge", "info", "--model", str(small_artifact_path)], capsys)
    assert code == 0 and '"layout": "i2"' in out and "file_sha256" in out
    code, out, _ = run(["edge", "generate", "--model", str(small_artifact_path), "41+17?"], capsys)
    assert code == 0 and "41+17? ->" in out
    code, out, _ = run(
        ["edge", "eval", "--model", str(small_artifact_path), "--per-grade", "2"], capsys
    )
    assert code == 0 and "accuracy" in out
    code, out, _ = run(["edge", "profiles", "--model", str(small_artifact_path)], capsys)
    assert code == 0 and "coral-npu" in out and "riscv-npu" in out


def test_train_writes_artifact_recipe_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "m.safetensors"
    argv = ["edge", "train", "--steps", "2", "--batch-size", "4", "--evaluate", "1"]
    code, _, _ = run([*argv, "--out", str(out_path)], capsys)
    assert code == 0
    assert '"heldout_accuracy"' in out_path.with_suffix(".report.json").read_text()
    from trifecta.edge.artifact import EdgeArtifact

    assert set(EdgeArtifact.load(out_path).accuracy) == {1, 2, 3, 4, 5}
    # the recipe reproduces the artifact
    again = tmp_path / "again.safetensors"
    recipe = out_path.with_suffix(".recipe.json")
    code, _, _ = run(
        ["edge", "train", "--recipe", str(recipe), "--out", str(again), "--evaluate", "1"], capsys
    )
    assert code == 0
    assert EdgeArtifact.load(again).payload_sha256() == EdgeArtifact.load(out_path).payload_sha256()


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, small_artifact_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(small_artifact_path.read_bytes()[:1000])
    cases = [
        (["edge", "info", "--model", str(corrupt)], "artifact"),
        (["edge", "generate", "--model", str(small_artifact_path), "41 + 17?"], "prompt"),
        (
            ["edge", "generate", "--model", str(small_artifact_path), "--kernel", "fast", "1+1?"],
            "kernel",
        ),
        (["edge", "compile", "--model", str(small_artifact_path), "--target", "tpu"], "target"),
        (["edge", "mesh"], "node"),
        (["edge", "train", "--layout", "i4", "--out", str(tmp_path / "x.safetensors")], "layout"),
        (["edge", "profiles", "--layout", "i3"], "layout"),  # was a KeyError traceback
        (["edge", "profiles", "--phase", "prod"], "phase"),
        (["edge", "node", "--name", "n", "--port", "99999"], "port"),  # was bound as 34463
        (["edge", "node", "--name", "n", "--port", "0"], "port"),
    ]
    for argv, field in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert err.startswith("trifecta: error: ") and field in err and err.count("\n") == 1, (
            argv,
            err,
        )
        assert "Traceback" not in err
