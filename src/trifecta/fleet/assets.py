"""Reading the fleet's data files: shipped assets, and user YAML/JSON with clear errors.

User files get one-line errors naming the field (`fleet: malformed YAML at line 3 ...`,
`capsules[2].demand.requests_per_s: ...`) instead of a parser traceback.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trifecta.core.errors import InvalidInput, NotFound, invalid_input_from

# libyaml's C loader and dumper when PyYAML was built with them (the wheels are): the
# pure-Python loader took 11.8 of the 14.4 s of `trifecta plan` on a 10,000-capsule fleet.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Even libyaml builds every Python object in PyYAML's Python constructor: 7.5 s of a loaded
# machine for a 10,000-capsule fleet, where yaml-rs (Rust) takes 0.23 s. A file with explicit
# document markers, or one yaml-rs refuses, is read by PyYAML as before (same result, same
# errors: one document, duplicate keys allowed); what yaml-rs reads differently is YAML 1.2's
# plain scalars (`no` stays a string, `1e3` is a number), which the models then validate.
_DOCUMENT_MARKER = re.compile(r"^(---|\.\.\.)", re.MULTILINE)


def asset_path(relative: str) -> Path:
    """A file under `trifecta/assets/`."""
    return Path(str(importlib.resources.files("trifecta") / "assets" / relative))


def read_asset(relative: str) -> Any:
    with asset_path(relative).open() as handle:
        return yaml.load(handle, Loader=_SAFE_LOADER)


def read_document(path: Path, *, field: str) -> Any:
    """Parse a user's YAML or JSON file (libyaml's C loader where PyYAML has it)."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}", field=field)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field=field) from None
    if path.suffix.lower() == ".json":  # the json module reads JSON ten times faster
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                field=field,
            ) from None
    if not _DOCUMENT_MARKER.search(text):
        import yaml_rs  # here, not at the top: every command imports this module at start-up

        try:
            return yaml_rs.loads(text)
        except yaml_rs.YAMLDecodeError:
            pass  # PyYAML decides, and words the error
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
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
        path.write_text(yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False))


def invalid_from(exc: ValidationError, *, prefix: str) -> InvalidInput:
    """The first pydantic error as `InvalidInput` whose field is `prefix.path.to.field`."""
    return invalid_input_from(exc, prefix=prefix)
