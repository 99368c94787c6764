"""The embedder's environment variables are checked with the settings, at start-up, not at the
first embedding minutes into a run: a bad value is one line naming the variable and the values
it takes, exit 2."""

from __future__ import annotations

import pytest

from trifecta.cli import main
from trifecta.core.embed_compiled import ENGINE_ENV, PRECISION_ENV
from trifecta.core.errors import InvalidInput
from trifecta.core.settings import Settings, get_settings


@pytest.mark.parametrize(
    ("variable", "bad", "allowed", "good"),
    [
        (ENGINE_ENV, "onnx", "torchscript", " Eager "),
        (PRECISION_ENV, "int4", "bfloat16", "FLOAT32"),
    ],
)
def test_a_bad_value_fails_at_start_up_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    bad: str,
    allowed: str,
    good: str,
) -> None:
    monkeypatch.setenv(variable, bad)
    with pytest.raises(InvalidInput) as error:
        Settings()
    assert error.value.field == variable
    get_settings.cache_clear()  # the CLI reads the settings afresh, as a new process does
    try:
        with pytest.raises(SystemExit) as exited:
            main(["run", "--requests", "1", "--seed", "7"])
    finally:
        get_settings.cache_clear()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and f"'{bad}'" in lines[0]
    assert allowed in lines[0]  # the values it takes
    monkeypatch.setenv(variable, good)  # case and spaces as the embedder reads them
    Settings()
