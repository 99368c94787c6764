"""Connecting federated training to a Ray cluster: a wrong address is one clear error."""

from __future__ import annotations


def test_an_unanswered_ray_address_is_one_clear_error() -> None:
    """`tl learn --ray-address` at a port nothing listens on fails at once, naming the field."""
    import pytest

    from tests.support import free_port
    from trifecta.core.errors import Unavailable
    from trifecta.tensorlogic.ray_sites import _check_reachable

    with pytest.raises(Unavailable) as refused:
        _check_reachable(f"127.0.0.1:{free_port()}")
    assert refused.value.field == "ray_address"
    _check_reachable(None)  # a local cluster: Ray's own to resolve
    _check_reachable("auto")
