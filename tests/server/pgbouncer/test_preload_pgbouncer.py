"""``gunicorn --preload`` through a transaction-pooling PgBouncer.

The soak application's start-up check leaves a client connection to
PgBouncer in the master's pool before it forks three workers. Behind a
pooler the PostgreSQL backend changes from one transaction to the next, so
sharing is seen on the client side instead: every answer names the local
address of the socket its worker talks to PgBouncer on, and no such socket
may serve more than one worker process. Every request succeeds, and nothing
is left busy in PgBouncer or inside a transaction on PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from harness.pgbouncer import PgBouncer

from ..support import Serve, app_tables
from ..test_faults import SOAK_APP
from .checks import assert_nothing_left_open


@pytest.fixture
def direct(postgresql_url: str) -> Iterator[Engine]:
    with app_tables(SOAK_APP, postgresql_url):
        engine = create_engine(postgresql_url)
        yield engine
        engine.dispose()


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_preloaded_workers_never_share_a_client_connection_to_pgbouncer(
    gunicorn: Serve, pgbouncer: PgBouncer, direct: Engine, worker_class: str
) -> None:
    server = gunicorn(
        "soak_app:app",
        database=pgbouncer.url(application_name="wsgi_sqla_soak"),
        worker_class=worker_class,
        workers=3,
        threads=4,
        preload=True,
        env={"DATABASE_POOLING": "transaction"},
    )
    sockets: dict[str, set[int]] = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # until several workers answered
            replies = list(pool.map(lambda _: server.request("GET", "/backend"), range(24)))
            assert [r.status for r in replies] == [200] * len(replies), [r.body for r in replies]
            answers: list[dict[str, Any]] = [r.json() for r in replies]
            for answer in answers:
                sockets.setdefault(answer["local"], set()).add(answer["pid"])
            if len(set().union(*sockets.values())) >= 2:
                break
    assert len(set().union(*sockets.values())) >= 2, "only one worker ever answered"
    shared = {local: pids for local, pids in sockets.items() if len(pids) > 1}
    assert shared == {}, f"client connections used by several worker processes: {shared}"
    assert_nothing_left_open(pgbouncer, direct)
