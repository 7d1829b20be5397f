"""Faults through a transaction-pooling PgBouncer: the server connection comes back clean.

The fault tests of tests/server/test_faults.py, with the soak application's
gunicorn worker reaching PostgreSQL through our PgBouncer
(``DATABASE_POOLING=transaction``): a backend killed in the middle of a
request's query, and a client that hangs up while its response streams.
Besides the checks those tests make (the right status, nothing uncommitted
kept, the next request works without a restart), PgBouncer's console and
``pg_stat_activity`` must show every remaining server connection idle, none
busy or left inside a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from ..conftest import app_tables, servers
from ..test_faults import (
    SOAK_APP,
    Faulty,
    hang_up_mid_stream_and_check,
    kill_mid_request_and_check,
)
from .bouncer import PgBouncer
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
