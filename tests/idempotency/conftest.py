"""Fixtures of the in-process Idempotency-Key tests: the keys' table and an orders app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from idempotency_support import Orders
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

from wsgi_sqla import IdempotencyKeys


@pytest.fixture
def keys(engine: Engine) -> Iterator[IdempotencyKeys]:
    """Default keys, their table created fresh on the database under test."""
    made = IdempotencyKeys()
    made.table.drop(engine, checkfirst=True)
    made.table.create(engine)
    yield made
    made.table.drop(engine, checkfirst=True)


@pytest.fixture
def orders(session: scoped_session[Any], engine: Engine) -> Iterator[Orders]:
    """The orders application and its table, fresh for the test."""
    made = Orders(session)
    made.metadata.drop_all(engine)
    made.metadata.create_all(engine)
    yield made
    session.remove()
    made.metadata.drop_all(engine)
