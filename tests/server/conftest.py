"""Fixtures of the end-to-end tests; the helpers they use are in support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from .doubt import Doubt, doubt_over
from .support import Serve, servers


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Serve]:
    """``gunicorn(app, database=url, worker_class=..., ...)`` starts a server for this test."""
    with servers(tmp_path) as serve:
        yield serve


@pytest.fixture
def doubt(engine: Engine) -> Iterator[Doubt]:
    """The application reaching ``engine``'s database through a COMMIT-cutting proxy."""
    with doubt_over(engine) as made:
        yield made
