"""Shared by the benchmark scripts: write a result section into BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, markdown: str) -> None:
    """Replace the text between `<!-- section:NAME -->` and `<!-- /section:NAME -->`
    (appending the markers if the file lacks them)."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    BENCHMARKS_MD.write_text(text)
