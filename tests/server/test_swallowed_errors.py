"""A view that swallows the database's error is not a success, under gunicorn.

On PostgreSQL a statement that fails aborts the whole transaction; a view
that catches the ``IntegrityError`` outside a savepoint and answers 201 has
lost the work done before it (COMMIT of an aborted transaction is a
ROLLBACK, and the driver does not complain). The middleware must answer 500
and commit nothing (:class:`wsgi_sqla.RejectedWorkError`). The savepoint
idiom, which undoes only the failed statement, must keep working: 201 and
the first row committed. The database is read through the test's own
connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from support import database_url

from .support import Gunicorn, Serve, app_tables, until

SWALLOW_APP = Path(__file__).with_name("swallow_app.py")
REQUESTS = 20

pytestmark = pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)


@pytest.fixture
def served(db_name: str, tmp_path: Path, gunicorn: Serve) -> Iterator[tuple[Gunicorn, Engine]]:
    """swallow_app in one gthread worker, and an engine of the test's own."""
    url = database_url(db_name, tmp_path)
    engine = create_engine(url)
    try:
        with app_tables(SWALLOW_APP, url):
            server = gunicorn("swallow_app:app", database=url, worker_class="gthread", threads=4)
            yield server, engine
    finally:
        engine.dispose()


def committed(engine: Engine, key: str) -> bool:
    with engine.connect() as connection:
        query = text("SELECT count(*) FROM swallow_items WHERE tag = :key")
        return int(connection.execute(query, {"key": key}).scalar_one()) > 0


def test_view_swallowing_an_integrity_error_answers_500_and_commits_nothing(
    served: tuple[Gunicorn, Engine],
) -> None:
    server, engine = served
    outcomes = []
    for _ in range(REQUESTS):
        key = uuid.uuid4().hex
        status = server.request("POST", f"/swallow?key={key}").status
        outcomes.append((status, committed(engine, key)))
    false_successes = sum(1 for status, kept in outcomes if 200 <= status < 300 and not kept)
    print(f"\n{REQUESTS} swallowed errors: {false_successes} answered 2xx with the first row lost")

    assert false_successes == 0
    assert outcomes == [(500, False)] * REQUESTS


def test_view_undoing_the_duplicate_in_a_savepoint_answers_201_and_keeps_the_first_row(
    served: tuple[Gunicorn, Engine],
) -> None:
    server, engine = served
    key = uuid.uuid4().hex

    assert server.request("POST", f"/savepoint?key={key}").status == 201
    assert committed(engine, key)


def test_view_swallowing_an_integrity_error_is_logged_with_the_error_and_the_savepoint_idiom(
    served: tuple[Gunicorn, Engine],
) -> None:
    server, _ = served

    server.request("POST", f"/swallow?key={uuid.uuid4().hex}")

    # The ERROR record reaches the server's log through logging's last-resort handler.
    assert until(lambda: "begin_nested" in server.log_text(), timeout=5), server.tail()
    assert "duplicate key" in server.log_text(), server.tail()
