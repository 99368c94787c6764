"""A content-addressed artifact store: what an edge node holds and what the mesh syncs.

Artifacts are blobs named by the SHA-256 of their bytes, each tagged with a kind (`model`,
`playbook`, `tensorlogic`) and a logical name. The newest blob of a (kind, name) is current;
`inventory()` lists the current ones, which is what the mesh compares to decide what a node
lacks. Writes go through a temporary file and a rename, and the index is rewritten the same
way, so a crash never leaves a half-written blob or index behind.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from trifecta.core.errors import InvalidInput, NotFound

ArtifactKind = Literal["model", "playbook", "tensorlogic"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("model", "playbook", "tensorlogic")
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ArtifactRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ArtifactKind
    name: str = Field(pattern=NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    created: float = Field(default_factory=time.time)


_INDEX = TypeAdapter(list[ArtifactRef])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inventory_digest(refs: list[ArtifactRef]) -> str:
    """One hash over a set of current artifacts: equal digests mean nothing to sync."""
    return sha256_hex("\n".join(sorted(f"{r.kind}/{r.name}/{r.sha256}" for r in refs)).encode())


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._index_path = root / "index.json"
        self._lock = threading.Lock()
        self._refs: list[ArtifactRef] = (
            _INDEX.validate_json(self._index_path.read_bytes()) if self._index_path.exists() else []
        )

    def put(
        self, kind: ArtifactKind, name: str, data: bytes, *, sha256: str | None = None
    ) -> ArtifactRef:
        """Store `data`; when `sha256` is given it must match (a transfer check)."""
        digest = sha256_hex(data)
        if sha256 is not None and sha256 != digest:
            raise InvalidInput(
                f"content hash mismatch: got {digest[:12]}, expected {sha256[:12]}", field="sha256"
            )
        ref = ArtifactRef(kind=kind, name=name, sha256=digest, size=len(data))
        with self._lock:
            blob = self.blobs / digest
            if not blob.exists():
                partial = blob.with_suffix(".partial")
                partial.write_bytes(data)
                partial.replace(blob)
            self._refs = [r for r in self._refs if not (r.kind == kind and r.name == name)] + [ref]
            partial_index = self._index_path.with_suffix(".partial")
            partial_index.write_bytes(_INDEX.dump_json(self._refs, indent=1))
            partial_index.replace(self._index_path)
        return ref

    def path(self, sha256: str) -> Path:
        blob = self.blobs / sha256
        if not blob.is_file():
            raise NotFound(f"no artifact {sha256[:12]}", field="sha256")
        return blob

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def inventory(self) -> list[ArtifactRef]:
        with self._lock:
            return list(self._refs)

    def current(self, kind: ArtifactKind, name: str | None = None) -> ArtifactRef | None:
        """The current artifact of a kind (and name); the newest when no name is given."""
        refs = [r for r in self.inventory() if r.kind == kind and (name is None or r.name == name)]
        return max(refs, key=lambda r: r.created) if refs else None

    def digest(self) -> str:
        return inventory_digest(self.inventory())
