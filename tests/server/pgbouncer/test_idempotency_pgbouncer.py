"""Idempotency keys through a transaction-pooling PgBouncer.

The claim, the record and the release are ordinary transactions (no
advisory lock, no ``SET``), so twenty identical keyed POSTs served by
2 gunicorn workers x 8 threads through our PgBouncer with 4 server
connections still run the view once, with one order row and no 5xx, and
leave no server connection busy or inside a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from harness.pgbouncer import PgBouncer

from ..support import Serve, app_tables
from ..test_idempotency_servers import APP, check_once
from .checks import assert_nothing_left_open


@pytest.fixture
def orders_db(postgresql_url: str) -> Iterator[str]:
    with app_tables(APP, postgresql_url) as module:
        module.keys.table.drop(module.engine, checkfirst=True)
        module.keys.table.create(module.engine)
        try:
            yield postgresql_url
        finally:
            module.keys.table.drop(module.engine)


@pytest.fixture
def direct(postgresql_url: str) -> Iterator[Engine]:
    engine = create_engine(postgresql_url)
    yield engine
    engine.dispose()


def test_twenty_duplicates_through_pgbouncer_run_the_view_once(
    gunicorn: Serve, pgbouncer: PgBouncer, orders_db: str, direct: Engine, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.touch()
    server = gunicorn(
        "idempotency_app:application",
        database=pgbouncer.url(),
        worker_class="gthread",
        workers=2,
        threads=8,
        env={"RUNS_FILE": str(runs), "DATABASE_POOLING": "transaction"},
    )
    print(check_once(server, orders_db, runs))
    assert_nothing_left_open(pgbouncer, direct)
