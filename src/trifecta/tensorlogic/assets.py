"""The Tensor Logic programs the package ships (capsules name them in `Capsule.program`)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from trifecta.core.errors import NotFound


def programs_dir() -> Path:
    return Path(str(importlib.resources.files("trifecta") / "assets" / "tensorlogic"))


def shipped_programs() -> list[str]:
    return sorted(p.stem for p in programs_dir().glob("*.tl"))


def program_path(name: str) -> Path:
    path = programs_dir() / f"{name}.tl"
    if not path.is_file():
        raise NotFound(f"no shipped program {name!r}", field="program", allowed=shipped_programs())
    return path
