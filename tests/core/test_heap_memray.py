"""The heap report's memray window: what a process allocated inside the window and still
holds is reported by library and line at each mark; what it freed, or made before the
window, is not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trifecta.core.heap_memray import HeldBySite

pytest.importorskip("memray")

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from trifecta.core.heap_memray import MemrayWindow

    before = bytearray(8 << 20)  # made before the window: not reported
    window = MemrayWindow(Path(sys.argv[1]), after_s=0.0, for_s=30.0)
    window.start()
    assert window.tracking.wait(30)

    def keep_this():
        return bytearray(12 << 20)

    def free_this():
        freed = bytearray(20 << 20)
        del freed

    time.sleep(0.3)
    free_this()
    kept = keep_this()
    time.sleep(0.3)
    window.close()
    assert window.done.is_set()
    """
)


READ = (
    "import json, sys; from pathlib import Path; "
    "from trifecta.core.heap_memray import memray_growth; "
    "print(json.dumps([r.model_dump() for r in memray_growth(Path(sys.argv[1]))]))"
)


@pytest.mark.slow
def test_memray_window_reports_what_the_window_kept(tmp_path: Path) -> None:
    script, capture = tmp_path / "child.py", tmp_path / "capture.bin"
    script.write_text(CHILD)
    subprocess.run([sys.executable, str(script), str(capture)], check=True, timeout=120)
    # Read in another process too: memray loaded here unsettled this session's tracemalloc
    # test (test_heap.py) when it ran after this one.
    read = subprocess.run(
        [sys.executable, "-c", READ, str(capture)],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    rows = [HeldBySite.model_validate(row) for row in json.loads(read.stdout)]
    kept = [r for r in rows if "keep_this" in r.site]
    assert len(kept) == 1 and 12 <= kept[0].mb[-1] < 12.5
    assert kept[0].mb[0] < 1  # made after the first mark: the rise is seen
    assert sum(r.mb[-1] for r in rows) < 19  # not the 20 MB freed, not the 8 MB before
    assert rows[0] is kept[0]  # the largest growth comes first
