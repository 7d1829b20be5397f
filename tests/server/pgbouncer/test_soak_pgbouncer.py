"""The soak of tests/server/test_soak.py, served through a transaction-pooling PgBouncer.

The same seeded request mix, the same database-equals-what-the-clients-saw
checks (see :func:`server.test_soak.run_soak`), with gunicorn's 16 threads
(2 workers x 8) reaching PostgreSQL through our PgBouncer with 4 server
connections and ``DATABASE_POOLING=transaction``. Afterwards PgBouncer's
admin console and PostgreSQL's ``pg_stat_activity`` must show no waiting
client, no busy server connection and none left inside a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.pgbouncer import PgBouncer

from ..support import Serve
from ..test_soak import Soak, run_soak, soak_server
from .checks import assert_nothing_left_open

pytestmark = pytest.mark.soak


@pytest.fixture
def soak(postgresql_url: str, pgbouncer: PgBouncer, gunicorn: Serve) -> Iterator[Soak]:
    through = pgbouncer.url(application_name="wsgi_sqla_soak")
    env = {"DATABASE_POOLING": "transaction"}
    with soak_server(gunicorn, postgresql_url, through=through, env=env) as running:
        yield running


def test_soak_through_pgbouncer_database_equals_what_the_clients_saw(
    soak: Soak, pgbouncer: PgBouncer
) -> None:
    assert pgbouncer.pool_size < 16, "the bouncer's pool must be smaller than the concurrency"
    run_soak(soak, label=f" through PgBouncer (pool_size {pgbouncer.pool_size})")
    assert_nothing_left_open(pgbouncer, soak.engine)
    print(f"  PgBouncer pool after the run: {pgbouncer.pool()}")
