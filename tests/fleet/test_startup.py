"""What `trifecta --help` and `trifecta plan` import: only what they use.

Start-up was most of what a user waited for on `trifecta plan` (a module-level import in one
sub-command's `cli.py` pulled torch and transformers into every command). These are checks of
`sys.modules` in a fresh interpreter, not timings, so they hold on a loaded machine too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY_AT_START = ("torch", "transformers", "sentence_transformers", "ray", "scipy")
# the planner needs scipy (HiGHS); nothing of the serving stack
HEAVY_FOR_PLAN = ("torch", "transformers", "sentence_transformers", "ray")


def _imported_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    loaded = _imported_after("import trifecta.cli")
    assert "typer" in loaded  # the probe saw the CLI's own imports
    assert [m for m in HEAVY_AT_START if m in loaded] == []


def test_plan_command_imports_the_solver_but_not_the_serving_stack(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    out = tmp_path / "plan.json"
    code = (
        "from trifecta.fleet.fleetfile import dump_fleet, generate_fleet\n"
        f"dump_fleet(generate_fleet(20, seed=1, phase='pilot'), {str(fleet)!r})\n"
        "from trifecta.cli import app\n"
        f"app(args=['plan', '--fleet', {str(fleet)!r}, '--phase', 'pilot', '--out', "
        f"{str(out)!r}], standalone_mode=False)"
    )
    loaded = _imported_after(code)
    assert json.loads(out.read_text())["solver"]["capsules"] == 20
    assert "scipy" in loaded
    assert [m for m in HEAVY_FOR_PLAN if m in loaded] == []
