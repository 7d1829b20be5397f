"""Keyed requests run on the primary, whatever the replicas' ``reads`` predicate says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from idempotency_support import Orders, keyed
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session
from support import make_engine

from wsgi_sqla import IdempotencyKeys, Replicas, SessionMiddleware

# Read replicas exist on PostgreSQL and MariaDB only.
pytestmark = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)


@pytest.fixture
def replicas(engine: Engine, session: scoped_session[Any]) -> Iterator[Replicas]:
    """A "replica" that is the primary's own database, which every request may read from.

    A unit routed to it runs in a read-only transaction, so a write there fails.
    """
    replica = make_engine(engine.url.render_as_string(hide_password=False))
    yield Replicas({session: [replica]}, reads=lambda environ: True, max_lag=None)
    replica.dispose()


def test_a_keyed_post_writes_on_the_primary_although_reads_allows_a_replica(
    session: scoped_session[Any],
    engine: Engine,
    keys: IdempotencyKeys,
    orders: Orders,
    replicas: Replicas,
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys, replicas=replicas)
    assert keyed(app).status == "201 Created"
    assert keyed(app).headers[-1] == ("Idempotent-Replayed", "true")
    assert orders.count(engine) == 1


def test_the_same_post_without_a_key_is_routed_to_the_replica(
    session: scoped_session[Any],
    engine: Engine,
    keys: IdempotencyKeys,
    orders: Orders,
    replicas: Replicas,
) -> None:
    """The control: ``reads`` does send this request to the read-only replica."""
    app = SessionMiddleware(orders.app, session, idempotency=keys, replicas=replicas)
    assert keyed(app, None).client_status != "201 Created"
    assert orders.count(engine) == 0
