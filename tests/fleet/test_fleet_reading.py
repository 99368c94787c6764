"""Reading fleet files: yaml-rs where it can, PyYAML where it refuses or the file has document
markers, with the same results and error messages as before for everything PyYAML read."""

from __future__ import annotations

from pathlib import Path

import pytest

from trifecta.core.errors import InvalidInput
from trifecta.fleet.assets import read_document
from trifecta.fleet.fleetfile import load_fleet

SOVEREIGN = """capsules:
- id: sov-1
  name: Norway's twin
  kind: sovereign
  domain: energy
  jurisdiction: no
  demand: {requests_per_s: 0.5}
"""


def test_plain_scalars_are_read_as_yaml_1_2(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML alone) reads `no` as False, and the capsule was refused
    (tmp_path / "f.yaml").write_text(SOVEREIGN)
    (capsule,) = load_fleet(tmp_path / "f.yaml")
    assert capsule.jurisdiction == "no"
    (tmp_path / "n.yaml").write_text("rate: 1e3\n")
    assert read_document(tmp_path / "n.yaml", field="fleet") == {"rate": 1000.0}


def test_what_yaml_rs_refuses_pyyaml_decides(tmp_path: Path) -> None:
    (tmp_path / "dup.yaml").write_text("a: 1\na: 2\n")  # PyYAML keeps the last, as it did
    assert read_document(tmp_path / "dup.yaml", field="fleet") == {"a": 2}
    (tmp_path / "docs.yaml").write_text("---\na: 1\n---\nb: 2\n")
    with pytest.raises(InvalidInput, match="malformed YAML"):  # one document, as before
        read_document(tmp_path / "docs.yaml", field="fleet")
    (tmp_path / "bad.yaml").write_text("capsules:\n  - id: x\n   name: y\n")
    with pytest.raises(InvalidInput, match=r"malformed YAML in .* at line 3") as caught:
        read_document(tmp_path / "bad.yaml", field="fleet")
    assert caught.value.field == "fleet"
