"""Reading the fleet's data files: shipped assets, and user YAML/JSON with clear errors.

User files get one-line errors naming the field (`fleet: malformed YAML at line 3 ...`,
`capsules[2].demand.requests_per_s: ...`) instead of a parser traceback.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trifecta.core.errors import InvalidInput, NotFound, invalid_input_from


def asset_path(relative: str) -> Path:
    """A file under `trifecta/assets/`."""
    return Path(str(importlib.resources.files("trifecta") / "assets" / relative))


def read_asset(relative: str) -> Any:
    with asset_path(relative).open() as handle:
        return yaml.safe_load(handle)


def read_document(path: Path, *, field: str) -> Any:
    """Parse a user's YAML or JSON file (JSON is YAML, so one parser reads both)."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}", field=field)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field=field) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"malformed YAML in {path}{where}: {problem}", field=field) from None


def write_document(data: Any, path: Path) -> None:
    """Write `data` as JSON for a `.json` path, YAML otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def invalid_from(exc: ValidationError, *, prefix: str) -> InvalidInput:
    """The first pydantic error as `InvalidInput` whose field is `prefix.path.to.field`."""
    return invalid_input_from(exc, prefix=prefix)
