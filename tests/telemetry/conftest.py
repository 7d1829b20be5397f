"""Fixtures of the telemetry tests: the SDK's in-memory recordings."""

from __future__ import annotations

import pytest

from .recorded import Recorded, recorded


@pytest.fixture
def telemetry() -> Recorded:
    """The spans and metrics recorded from here on (the SDK's providers, in memory)."""
    return recorded()
