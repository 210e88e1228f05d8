"""Fixtures the backend tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def ray_module():
    """The `ray` module with no Ray running: the test starts its own (or lets the backend start one),
    and it is shut down afterwards, so no test sees another's cluster."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    yield ray
    ray.shutdown()
