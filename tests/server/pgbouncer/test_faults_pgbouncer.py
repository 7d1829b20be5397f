"""Faults through a transaction-pooling PgBouncer: the server connection comes back clean.

The fault tests of tests/server/test_faults.py, with the soak application's
gunicorn worker reaching PostgreSQL through our PgBouncer
(``DATABASE_POOLING=transaction``): a backend killed in the middle of a
request's query, and a client that hangs up while its response streams.
Besides the checks those tests make (the right status, nothing uncommitted
kept, the next request works without a restart), PgBouncer's console and
``pg_stat_activity`` must show every remaining server connection idle, none
busy or left inside a transaction. And backends that die while idle are
replaced by PgBouncer without its clients noticing, which is why
``pool_pre_ping`` is not needed behind it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from harness.pgbouncer import PgBouncer
from wsgi_sqla import transaction_pooled

from ..support import app_tables, servers
from ..test_faults import (
    SOAK_APP,
    Faulty,
    hang_up_mid_stream_and_check,
    kill_mid_request_and_check,
)
from .checks import assert_nothing_left_open


@pytest.fixture(scope="module")
def faulty(
    postgresql_url: str, pgbouncer: PgBouncer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Faulty]:
    engine = create_engine(postgresql_url)
    with (
        app_tables(SOAK_APP, postgresql_url),
        servers(tmp_path_factory.mktemp("gunicorn")) as serve,
    ):
        try:
            server = serve(
                "soak_app:app",
                database=pgbouncer.url(application_name="wsgi_sqla_soak"),
                worker_class="gthread",
                workers=1,
                threads=4,
                env={"DATABASE_POOLING": "transaction"},
            )
            yield Faulty(server, None, engine)
        finally:
            engine.dispose()


def test_backend_killed_mid_request_through_pgbouncer_leaves_the_pool_clean(
    faulty: Faulty, pgbouncer: PgBouncer
) -> None:
    kill_mid_request_and_check(faulty)
    assert_nothing_left_open(pgbouncer, faulty.engine)


def test_client_hanging_up_mid_stream_through_pgbouncer_leaves_the_pool_clean(
    faulty: Faulty, pgbouncer: PgBouncer
) -> None:
    hang_up_mid_stream_and_check(faulty)
    assert_nothing_left_open(pgbouncer, faulty.engine)


def test_idle_server_connections_killed_are_replaced_without_the_client_noticing(
    postgresql_url: str, pgbouncer: PgBouncer
) -> None:
    """Why pool_pre_ping is not needed: PgBouncer hides a lost idle backend from its clients."""
    engine = transaction_pooled(create_engine(pgbouncer.url()))  # no pool_pre_ping
    direct = create_engine(postgresql_url)
    try:
        with engine.connect() as connection:
            client = connection.connection.driver_connection
            connection.execute(text("SELECT 1"))
        pgbouncer.settle()
        killed = {int(row["remote_pid"]) for row in pgbouncer.servers()}
        with direct.connect() as connection:
            for pid in killed:
                connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        deadline = time.monotonic() + 10
        while killed & {int(row["remote_pid"]) for row in pgbouncer.servers()}:
            assert time.monotonic() < deadline, "PgBouncer kept the killed server connections"
            time.sleep(0.05)
        with engine.connect() as connection:
            assert connection.connection.driver_connection is client, "not the pooled connection"
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() not in killed
    finally:
        engine.dispose()
        direct.dispose()
