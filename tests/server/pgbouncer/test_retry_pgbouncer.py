"""SERIALIZABLE retries through a transaction-pooling PgBouncer.

The ledger of tests/server/test_retry_server.py (every request appends the
next number under SERIALIZABLE), served by 16 gunicorn threads that reach
PostgreSQL through our PgBouncer with 4 server connections. A retried
request runs its transaction again on whichever server connection is free:
every request must still end 201, the ledger must equal a serial run, and
no server connection may be left busy or inside a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from harness.pgbouncer import PgBouncer

from ..support import Serve, app_tables
from ..test_retry_server import RETRY_APP, check_serial_ledger, serve
from .checks import assert_nothing_left_open


@pytest.fixture
def ledger(postgresql_url: str) -> Iterator[str]:
    with app_tables(RETRY_APP, postgresql_url):
        yield postgresql_url


@pytest.fixture
def direct(postgresql_url: str) -> Iterator[Engine]:
    engine = create_engine(postgresql_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("framework", ["flask", "bottle"])
def test_conflicting_serializable_requests_through_pgbouncer_all_succeed_as_if_serial(
    gunicorn: Serve, pgbouncer: PgBouncer, ledger: str, direct: Engine, framework: str
) -> None:
    server = serve(
        gunicorn, pgbouncer.url(), framework, retries=30, env={"DATABASE_POOLING": "transaction"}
    )
    check_serial_ledger(server, ledger)
    assert_nothing_left_open(pgbouncer, direct)
