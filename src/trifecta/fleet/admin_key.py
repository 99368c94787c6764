"""The local admin key a server writes on first start, so the embedded default stays a
two-command experience: `trifecta serve`, `trifecta cognitive serve` and `trifecta context
serve` all call this one function (it lives in the control plane, below the layers, so each
layer's server can) and print where the key is.
"""

from __future__ import annotations

import os
from pathlib import Path

from trifecta.fleet.keys import KeyStore

ADMIN_KEY_FILE = "admin.key"


def ensure_local_admin_key(store: KeyStore, data_dir: Path) -> Path | None:
    """On first start (no admin key anywhere), create one and write it to
    `<data_dir>/admin.key`, readable by its owner only. Returns the file if it holds the
    server's admin key, None when admin keys exist but were made elsewhere."""
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path
    if store.has_admin():
        return None
    created = store.create(admin=True, label="local admin (first start)")
    data_dir.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(created.token + "\n")
    return path


def admin_key_notice(key_file: Path | None) -> str:
    """The line a server prints at start: where its admin key is."""
    where = f"in {key_file}" if key_file else "made with `trifecta keys create --admin`"
    return f"API keys required; the admin key is {where}"
