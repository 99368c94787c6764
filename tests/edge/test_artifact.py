"""The packed artifact: round trip, and corrupt or truncated files refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.edge.artifact import CorruptArtifact, EdgeArtifact

from .helpers import header_length, rewrite_metadata


def test_round_trip_keeps_every_weight(small_artifact: EdgeArtifact, tmp_path: Path) -> None:
    for layout in ("i2", "b3"):
        path = small_artifact.with_layout(layout).save(tmp_path / f"m-{layout}.safetensors")
        loaded = EdgeArtifact.load(path)
        assert loaded.layout == layout and loaded.config == small_artifact.config
        for name, matrix in small_artifact.ternary.items():
            assert np.array_equal(loaded.ternary[name].values(), matrix.values())
            assert loaded.ternary[name].scale == matrix.scale
        for name, tensor in small_artifact.floats.items():
            assert np.array_equal(loaded.floats[name], tensor)
        assert loaded.payload_sha256() == small_artifact.with_layout(layout).payload_sha256()


def test_base3_layout_is_smaller(small_artifact: EdgeArtifact) -> None:
    i2, b3 = (
        small_artifact.with_layout("i2").ternary_bytes(),
        small_artifact.with_layout("b3").ternary_bytes(),
    )
    shapes = [m.shape for m in small_artifact.ternary.values()]
    assert i2 == sum(n * -(-k // 4) for n, k in shapes)
    assert b3 == sum(n * -(-k // 5) for n, k in shapes) < i2  # 1.6 bits per weight plus padding


def test_flipped_weight_byte_is_refused(small_artifact_path: Path, tmp_path: Path) -> None:
    data = bytearray(small_artifact_path.read_bytes())
    data[8 + header_length(small_artifact_path) + 100] ^= 0x01  # a byte inside the tensor data
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match="payload_sha256"):
        EdgeArtifact.load(corrupt)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0001])
def test_truncated_file_is_refused(small_artifact_path: Path, tmp_path: Path, keep: float) -> None:
    data = small_artifact_path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptArtifact, match="not a readable safetensors file"):
        EdgeArtifact.load(truncated)


def test_other_format_version_is_refused(small_artifact_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "v1.safetensors"
    rewrite_metadata(small_artifact_path, path, format_version="1")
    with pytest.raises(InvalidInput, match="format_version") as info:
        EdgeArtifact.load(path)
    assert info.value.field == "format_version"


def test_edited_config_is_refused(small_artifact_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "edited.safetensors"
    config = json.loads(EdgeArtifact.load(small_artifact_path).config.model_dump_json())
    config["norm_eps"] = 0.1
    rewrite_metadata(small_artifact_path, path, config=json.dumps(config))
    with pytest.raises(CorruptArtifact, match="payload_sha256"):
        EdgeArtifact.load(path)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        EdgeArtifact.load(tmp_path / "nothing.safetensors")


def test_measured_accuracy_travels_with_the_artifact(
    small_artifact: EdgeArtifact, tmp_path: Path
) -> None:
    path = small_artifact.with_accuracy({1: 0.97, 2: 0.991}).save(tmp_path / "q.safetensors")
    assert EdgeArtifact.load(path).accuracy == {1: 0.97, 2: 0.991}
    edited = tmp_path / "edited-accuracy.safetensors"
    rewrite_metadata(path, edited, heldout_accuracy='{"1": 1.0, "2": 1.0}')
    with pytest.raises(CorruptArtifact, match="payload_sha256"):
        EdgeArtifact.load(edited)
