"""Fixtures for the tests behind a real PgBouncer in transaction pooling mode.

Each PgBouncer is our own process (see harness/pgbouncer.py) in front of the database
of ``WSGI_SQLA_POSTGRESQL_URL``, with a server pool smaller than the
number of concurrent clients the tests send, and is stopped by its pid when
its scope ends. Without the ``pgbouncer`` binary the tests skip on a laptop
and fail in CI (``tests.support.missing``). The gunicorn fixtures of
tests/server/conftest.py apply here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import database_url, missing

from harness.pgbouncer import MakeBouncer, PgBouncer, PgBouncerMissing, find_pgbouncer

# Well below the 16 concurrent clients of the soak and the ledger bursts.
POOL_SIZE = 4


@pytest.fixture(scope="module")
def postgresql_url() -> str:
    """The direct URL of the PostgreSQL test database (skips when it is not set)."""
    return database_url("postgresql", Path())


def _started(url: str, pool_size: int) -> PgBouncer:
    try:
        find_pgbouncer()
    except PgBouncerMissing as exc:
        missing(str(exc))
    bouncer = PgBouncer(url, pool_size=pool_size)
    bouncer.start()
    return bouncer


def _stopped(bouncer: PgBouncer) -> None:
    died = not bouncer.alive()
    log = bouncer.tail()
    bouncer.stop()
    if died:
        pytest.fail(f"PgBouncer died during the test\n--- pgbouncer log ---\n{log}", pytrace=False)


@pytest.fixture(scope="module")
def pgbouncer(postgresql_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer (transaction pooling, ``default_pool_size`` 4) shared by a module's tests."""
    bouncer = _started(postgresql_url, POOL_SIZE)
    try:
        yield bouncer
    finally:
        _stopped(bouncer)


@pytest.fixture
def make_pgbouncer(postgresql_url: str) -> Iterator[MakeBouncer]:
    """``make_pgbouncer(pool_size=n)`` starts a PgBouncer of the test's own."""
    started: list[PgBouncer] = []

    def make(pool_size: int = POOL_SIZE) -> PgBouncer:
        started.append(_started(postgresql_url, pool_size))
        return started[-1]

    try:
        yield make
    finally:
        for bouncer in started:
            _stopped(bouncer)
