"""The heap report's memray window: what a process allocated inside the window and still
holds when it closes is reported with its stack; what it freed, or made before, is not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trifecta.core.heap_report import memray_leaks

pytest.importorskip("memray")

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from trifecta.core.heap_report import MemrayWindow

    before = bytearray(8 << 20)  # made before the window: not reported
    window = MemrayWindow(Path(sys.argv[1]), after_s=0.0, for_s=30.0)
    window.start()
    assert window.tracking.wait(30)

    def keep_this():
        return bytearray(12 << 20)

    kept = keep_this()
    freed = bytearray(20 << 20)
    del freed
    window.close()
    assert window.done.is_set()
    """
)


@pytest.mark.slow
def test_memray_window_reports_what_the_window_kept(tmp_path: Path) -> None:
    capture = tmp_path / "capture.bin"
    subprocess.run([sys.executable, "-c", CHILD, str(capture)], check=True, timeout=120)
    rows = memray_leaks(capture)
    assert rows, "the capture holds allocations"
    largest = rows[0]
    assert 12 <= float(largest["mb"]) < 12.5  # type: ignore[arg-type]
    assert any("keep_this" in frame for frame in largest["stack"])  # type: ignore[union-attr]
    assert sum(float(r["mb"]) for r in rows) < 19  # type: ignore[arg-type]  # not the 20 freed, not the 8 before
