"""psycopg 3's prepared statements through a transaction pooler, and transaction_pooled().

With one server connection behind PgBouncer, two clients take turns on the
same PostgreSQL connection. Each runs one query six times: psycopg prepares
it as ``_pg3_0`` on the fifth run, so the second client's ``PREPARE`` meets
the first client's statement of that name. That is the control showing the
hazard. wsgi_sqla explains that failure (a :class:`TransactionPoolerWarning`
and a note on the exception); with :func:`transaction_pooled` the same
clients never collide.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import scoped_session, sessionmaker
from support import database_url

from harness.pgbouncer import MakeBouncer, PgBouncer
from wsgi_sqla import TransactionPoolerWarning, transaction, transaction_pooled

RUNS = 6  # psycopg prepares a query on its 5th execution by default


def run_repeatedly(engine: Engine, sql: str) -> int:
    """Run ``sql`` RUNS times, each in a transaction of its own; the sum of the results."""
    total = 0
    for n in range(RUNS):
        with engine.begin() as connection:
            total += int(connection.execute(text(sql), {"n": n}).scalar_one())
    return total


def two_clients(bouncer: PgBouncer, pooled: bool) -> tuple[Engine, Engine]:
    engines = (create_engine(bouncer.url()), create_engine(bouncer.url()))
    return (transaction_pooled(engines[0]), transaction_pooled(engines[1])) if pooled else engines


def test_control_default_psycopg_clients_collide_on_a_shared_server_connection(
    make_pgbouncer: MakeBouncer,
) -> None:
    first, second = two_clients(make_pgbouncer(pool_size=1), pooled=False)
    try:
        run_repeatedly(first, "SELECT CAST(:n AS integer) + 1")
        with (
            pytest.raises(ProgrammingError, match='prepared statement "_pg3_0" already exists'),
            warnings.catch_warnings(),
        ):
            # An engine the package was never given gets no listener of its: no warning.
            warnings.simplefilter("error", TransactionPoolerWarning)
            run_repeatedly(second, "SELECT CAST(:n AS integer) + 2")
    finally:
        first.dispose()
        second.dispose()


def test_the_collision_warns_and_names_the_cure(make_pgbouncer: MakeBouncer) -> None:
    first, second = two_clients(make_pgbouncer(pool_size=1), pooled=False)
    transaction(scoped_session(sessionmaker(bind=second)))  # the package is given the engine
    try:
        run_repeatedly(first, "SELECT CAST(:n AS integer) + 1")
        with (
            pytest.warns(TransactionPoolerWarning, match=r"transaction_pooled\(engine\)"),
            pytest.raises(ProgrammingError) as raised,
        ):
            run_repeatedly(second, "SELECT CAST(:n AS integer) + 2")
        notes = getattr(raised.value, "__notes__", None)
        if notes is not None:  # Python 3.11+
            assert any("wsgi_sqla.transaction_pooled(engine)" in note for note in notes)
    finally:
        first.dispose()
        second.dispose()


def test_transaction_pooled_clients_share_a_server_connection_safely(
    make_pgbouncer: MakeBouncer,
) -> None:
    first, second = two_clients(make_pgbouncer(pool_size=1), pooled=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", TransactionPoolerWarning)
            assert run_repeatedly(first, "SELECT CAST(:n AS integer) + 1") == 15 + RUNS
            assert run_repeatedly(second, "SELECT CAST(:n AS integer) + 2") == 15 + 2 * RUNS
            assert run_repeatedly(first, "SELECT CAST(:n AS integer) + 1") == 15 + RUNS
    finally:
        first.dispose()
        second.dispose()


def test_transaction_pooled_drops_connections_opened_before_it(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url, connect_args={"prepare_threshold": 5})
    try:
        with engine.connect() as connection:
            before = connection.connection.driver_connection
        transaction_pooled(engine)
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not before
            assert driver.prepare_threshold is None  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_transaction_pooled_twice_is_the_same_as_once(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url)
    try:
        assert transaction_pooled(transaction_pooled(engine)) is engine
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
        transaction_pooled(engine)  # no second dispose: the pooled connection stays
        with engine.connect() as connection:
            assert connection.connection.driver_connection is driver
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        pytest.param("sqlite", ValueError, "is for PostgreSQL", id="sqlite"),
        pytest.param("mariadb", ValueError, "is for PostgreSQL", id="mariadb"),
        pytest.param(None, TypeError, "needs a sqlalchemy.Engine", id="not-an-engine"),
    ],
)
def test_transaction_pooled_refuses_what_it_is_not_for(
    tmp_path: Path, target: str | None, error: type[Exception], message: str
) -> None:
    if target is None:
        with pytest.raises(error, match=rf"^transaction_pooled\(\): {message}"):
            transaction_pooled("postgresql+psycopg://")  # type: ignore[arg-type]
        return
    engine = create_engine(database_url(target, tmp_path))
    try:
        with pytest.raises(error, match=rf"^transaction_pooled\(\): {message}"):
            transaction_pooled(engine)
    finally:
        engine.dispose()
