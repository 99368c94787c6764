"""`trifecta models ...` and `trifecta cognitive ...` through `trifecta.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_cli as run
from trifecta.core.tasks import solve


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0
    for name, preset in (("small", "userlm-8b"), ("medium", "userlm-13b"), ("large", "userlm-70b")):
        assert name in out and preset in out
    assert "missing" not in out


def test_generate_with_a_tier_and_the_cascade(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cognitive", "generate", "41+17?", "--model", "large", "--json"], capsys)
    assert code == 0
    line = json.loads(out)
    assert line["model"] == "large" and len(line["entropies"]) == len(line["tokens"])
    code, out, _ = run(["cognitive", "generate", "41+17?", "t=41,p=17,r=63;p?", "--json"], capsys)
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["prompt"] for x in lines] == ["41+17?", "t=41,p=17,r=63;p?"]
    for line in lines:
        assert line["decisions"][0]["tier"] == "small"
        assert line["model"] == line["decisions"][-1]["tier"]
    assert solve("41+17?") == "58"


def test_generate_says_whether_the_answer_is_right(capsys: pytest.CaptureFixture[str]) -> None:
    prompts = ["t=41,p=17,r=63;t+r?", "41+17-23?", "What is 7*6?"]
    code, out, _ = run(["cognitive", "generate", *prompts, "--model", "large", "--json"], capsys)
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    for line in lines[:2]:
        assert line["expected"] == solve(line["prompt"])
        assert line["verified"] == (line["answer"] == line["expected"])
    assert lines[2]["verified"] is None and lines[2]["expected"] is None  # answered, unverifiable
    code, out, _ = run(["cognitive", "generate", *prompts], capsys)
    assert code == 0 and "unverifiable" in out
    assert out.count("right") + out.count("wrong") == 2


def test_calibrate_a_capsule_and_list_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["capsule", "add", "--id", "twin-1", "--domain", "energy"], capsys)[0] == 0
    code, out, _ = run(
        ["cognitive", "calibrate", "--capsule", "twin-1", "--rate", "0.3", "--sample", "60"], capsys
    )
    assert code == 0 and "twin-1" in out and "version 1" in out
    code, out, _ = run(["cognitive", "thresholds"], capsys)
    assert code == 0 and "twin-1" in out and "(default)" in out
    code, out, _ = run(["cognitive", "generate", "41+17?", "--capsule", "twin-1", "--json"], capsys)
    assert code == 0 and json.loads(out)["decisions"]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["models", "train", "--tier", "huge"], "tier"),
        (["models", "train", "--steps", "0", "--tier", "small"], "steps"),
        (["cognitive", "generate", "41+17?", "--model", "gpt-9"], "model"),
        (["cognitive", "generate", "41+17?", "--model", "/no/such/dir"], "model_path"),
        (["cognitive", "calibrate", "--capsule", "ghost"], "capsule_id"),
        (["cognitive", "calibrate", "--default", "--capsule", "x"], "capsule"),
        (
            ["cognitive", "calibrate", "--capsule", "x", "--budget", "0.4", "--rate", "0.3"],
            "target",
        ),
        (["cognitive", "calibrate", "--capsule", "x", "--budget", "1.5"], "budget"),
        (["cognitive", "calibrate", "--capsule", "x", "--keep", "1.2"], "keep"),
        (["models", "train", "--tier", "large", "--refine-mix", "1=4,9=1"], "refine_mix"),
        (["models", "train", "--tier", "large", "--refine-mix", "1:4"], "refine_mix"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and f"{field}:" in err and "Traceback" not in err


def test_train_into_the_data_directory_then_promote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out the shipped weights are untouched; `promote` copies a tier over them."""
    from trifecta.cognitive import tiers
    from trifecta.core.settings import get_settings

    shipped = tmp_path / "assets"
    for name in ("small", "medium", "large"):
        (shipped / name).mkdir(parents=True)
        (shipped / name / "marker").write_text("shipped")
    monkeypatch.setattr(tiers, "assets_dir", lambda: shipped)
    code, out, _ = run(["models", "train", "--tier", "small", "--steps", "2"], capsys)
    assert code == 0 and "promote" in out
    trained = get_settings().data_dir / "cognitive" / "tiers" / "small"
    assert (trained / "model.safetensors").is_file() and (trained / "training.json").is_file()
    assert (shipped / "small" / "marker").read_text() == "shipped"  # untouched
    code, out, _ = run(["models", "promote", "--tier", "small", "--no-calibrate"], capsys)
    assert code == 0
    assert (shipped / "small" / "model.safetensors").is_file()
    assert not (shipped / "small" / "marker").exists()
    code, _, err = run(
        ["models", "promote", "--tier", "small", "--from", str(tmp_path / "none")], capsys
    )
    assert code == 2 and "model_path:" in err


def test_train_smoke_into_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["models", "train", "--tier", "small", "--steps", "3", "--out", str(tmp_path)], capsys
    )
    assert code == 0 and "grade 5" in out
    assert (tmp_path / "small" / "model.safetensors").is_file()
    code, _, err = run(
        ["models", "train", "--tier", "large", "--steps", "1", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "medium" in err and "--scratch" in err
    code, _, err = run(
        ["models", "train", "--tier", "small", "--warm-start", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "warm_start:" in err  # the small tier has no refine phase
    refine = ["--warm-start", "--refine-steps", "2", "--out", str(tmp_path)]
    code, out, _ = run(["models", "train", "--tier", "small", *refine], capsys)
    assert code == 0
    record = json.loads((tmp_path / "small" / "training.json").read_text())
    assert record["steps"] == 3 + 2 and record["warm_start"]["steps"] == 3
