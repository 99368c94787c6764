"""The packed edge-model artifact: one safetensors file, torch-free to read and write.

Layout (format `trifecta-edge-model`, version 2; version 1 had no Canon layers):

| tensor                         | dtype   | shape                       |
|--------------------------------|---------|-----------------------------|
| `<layer>.packed`               | uint8   | (out_features, packed_width): codes, see `packing` |
| `<layer>.scale`                | float32 | (1,) absmean scale beta     |
| float parameter names          | float32 | as in the PyTorch model     |

`<layer>` is a BitLinear's module name (`blocks.0.qkv`, ...); the float parameters are the
embeddings, norm gains and Canon weights (`tok_emb.weight`, `blocks.0.norm_attn.weight`,
`blocks.0.canon.weight`, ...).
Metadata: `format`, `format_version`, `layout` (`i2` or `b3`), `config` (the model's JSON)
and `payload_sha256`, a SHA-256 over the config, the layout and every tensor's name, dtype,
shape and bytes in name order. Loading checks all of it, so a corrupt or truncated file is a
`CorruptArtifact` error, never a model that answers wrongly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.edge.config import EdgeModelConfig
from trifecta.edge.packing import LAYOUTS, CorruptWeights, Layout, pack, packed_width, unpack

FORMAT = "trifecta-edge-model"
FORMAT_VERSION = 2


class CorruptArtifact(InvalidInput):
    """The file is not a whole, intact edge-model artifact."""


@dataclass(frozen=True)
class TernaryMatrix:
    """One BitLinear's weights: packed ternary codes and the absmean scale."""

    packed: NDArray[np.uint8]
    in_features: int
    scale: float
    layout: Layout = "i2"

    @property
    def out_features(self) -> int:
        return int(self.packed.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def values(self) -> NDArray[np.int8]:
        return unpack(self.packed, self.in_features, self.layout)

    @classmethod
    def from_values(
        cls, values: NDArray[np.integer], scale: float, layout: Layout = "i2"
    ) -> TernaryMatrix:
        return cls(pack(values, layout), int(values.shape[1]), float(np.float32(scale)), layout)

    def relayout(self, layout: Layout) -> TernaryMatrix:
        return (
            self
            if layout == self.layout
            else TernaryMatrix.from_values(self.values(), self.scale, layout)
        )


def _payload_hash(config_json: str, layout: str, tensors: Mapping[str, NDArray[np.generic]]) -> str:
    digest = hashlib.sha256()
    digest.update(config_json.encode())
    digest.update(layout.encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EdgeArtifact:
    config: EdgeModelConfig
    ternary: dict[str, TernaryMatrix]
    floats: dict[str, NDArray[np.float32]]
    layout: Layout = "i2"
    # Held-out accuracy per task grade, measured when the artifact was made ({} if unknown);
    # the offload policy only sends a grade to the edge where this meets the quality target.
    accuracy: dict[int, float] = field(default_factory=dict)

    def tensors(self) -> dict[str, NDArray[np.generic]]:
        out: dict[str, NDArray[np.generic]] = {
            n: np.ascontiguousarray(a, np.float32) for n, a in self.floats.items()
        }
        for name, matrix in self.ternary.items():
            out[f"{name}.packed"] = np.ascontiguousarray(matrix.relayout(self.layout).packed)
            out[f"{name}.scale"] = np.array([matrix.scale], dtype=np.float32)
        return out

    def _header(self) -> str:
        return self.config.model_dump_json() + _accuracy_json(self.accuracy)

    def payload_sha256(self) -> str:
        return _payload_hash(self._header(), self.layout, self.tensors())

    def save(self, path: Path) -> Path:
        tensors = self.tensors()
        config_json = self.config.model_dump_json()
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "layout": self.layout,
            "config": config_json,
            "heldout_accuracy": _accuracy_json(self.accuracy),
            "payload_sha256": _payload_hash(self._header(), self.layout, tensors),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)  # atomic: a reader never sees a half-written artifact
        return path

    def with_layout(self, layout: Layout) -> EdgeArtifact:
        return replace(
            self, ternary={n: m.relayout(layout) for n, m in self.ternary.items()}, layout=layout
        )

    def with_accuracy(self, accuracy: dict[int, float]) -> EdgeArtifact:
        return replace(self, accuracy=dict(accuracy))

    def ternary_bytes(self) -> int:
        return sum(m.relayout(self.layout).packed.nbytes for m in self.ternary.values())

    @classmethod
    def load(cls, path: Path) -> EdgeArtifact:
        if not path.is_file():
            raise NotFound(f"no edge-model artifact at {path}", field="artifact")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptArtifact(
                f"{path.name} is not a readable safetensors file ({exc})", field="artifact"
            ) from None
        return cls._from_parts(metadata, tensors, path.name)

    @classmethod
    def _from_parts(
        cls, metadata: dict[str, str], tensors: dict[str, NDArray[np.generic]], source: str
    ) -> EdgeArtifact:
        if metadata.get("format") != FORMAT:
            raise CorruptArtifact(f"{source} is not a {FORMAT} artifact", field="artifact")
        version = metadata.get("format_version")
        if version != str(FORMAT_VERSION):
            raise InvalidInput(
                f"{source} has format_version {version!r}",
                field="format_version",
                allowed=[FORMAT_VERSION],
            )
        layout = metadata.get("layout")
        if layout not in LAYOUTS:
            raise CorruptArtifact(f"{source} names unknown layout {layout!r}", field="artifact")
        try:
            config = EdgeModelConfig.model_validate_json(metadata.get("config", ""))
        except ValidationError as exc:
            raise CorruptArtifact(
                f"{source} has an invalid config ({exc.errors()[0]['msg']})", field="artifact"
            ) from None
        accuracy_json = metadata.get("heldout_accuracy", "{}")
        header = metadata["config"] + accuracy_json
        if _payload_hash(header, layout, tensors) != metadata.get("payload_sha256"):
            raise CorruptArtifact(
                f"{source} fails its payload_sha256 check (corrupt)", field="artifact"
            )
        try:
            accuracy = {int(g): float(a) for g, a in json.loads(accuracy_json).items()}
        except (ValueError, AttributeError, TypeError):
            raise CorruptArtifact(
                f"{source} has an invalid heldout_accuracy", field="artifact"
            ) from None
        return cls._assemble(config, layout, tensors, source).with_accuracy(accuracy)

    @classmethod
    def _assemble(
        cls,
        config: EdgeModelConfig,
        layout: Layout,
        tensors: dict[str, NDArray[np.generic]],
        source: str,
    ) -> EdgeArtifact:
        ternary: dict[str, TernaryMatrix] = {}
        floats: dict[str, NDArray[np.float32]] = {}
        shapes = config.ternary_shapes()
        for name, array in tensors.items():
            if name.endswith(".packed"):
                layer = name.removesuffix(".packed")
                out_features, in_features = shapes.get(layer.rsplit(".", 1)[-1], (-1, -1))
                expected = (out_features, packed_width(in_features, layout))
                if array.shape != expected or f"{layer}.scale" not in tensors:
                    raise CorruptArtifact(
                        f"{source}: {layer} does not match the config", field="artifact"
                    )
                matrix = TernaryMatrix(
                    array.astype(np.uint8), in_features, float(tensors[f"{layer}.scale"][0]), layout
                )
                try:
                    matrix.values()
                except CorruptWeights as exc:
                    raise CorruptArtifact(
                        f"{source}: {layer}: {exc.message}", field="artifact"
                    ) from None
                ternary[layer] = matrix
            elif not name.endswith(".scale"):
                floats[name] = array.astype(np.float32)
        if len(ternary) != config.n_layers * len(shapes):
            raise CorruptArtifact(
                f"{source} lacks ternary layers the config names", field="artifact"
            )
        if {n: a.shape for n, a in floats.items()} != config.float_shapes():
            raise CorruptArtifact(
                f"{source}: float tensors do not match the config", field="artifact"
            )
        return cls(config, ternary, floats, layout)


def _accuracy_json(accuracy: dict[int, float]) -> str:
    return json.dumps({str(g): round(float(a), 4) for g, a in sorted(accuracy.items())})


def read_bytes_hash(path: Path) -> str:
    """SHA-256 of a file's bytes: the content hash that names an artifact in the mesh."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(artifact: EdgeArtifact) -> dict[str, object]:
    """A short JSON-able summary for the CLI and node status."""
    return {
        "layout": artifact.layout,
        "config": json.loads(artifact.config.model_dump_json()),
        "ternary_parameters": artifact.config.ternary_parameters(),
        "ternary_bytes": artifact.ternary_bytes(),
        "payload_sha256": artifact.payload_sha256(),
        "heldout_accuracy": artifact.accuracy,
    }
