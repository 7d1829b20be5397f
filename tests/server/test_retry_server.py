"""Retries under real contention: concurrent SERIALIZABLE requests through gunicorn.

Every request of a burst appends to the same ledger (see retry_app.py), so
PostgreSQL aborts many of them with serialization failures. Through Flask
and through Bottle, with the hooks that hand the view's exception to the
middleware, every request must end 201 and the ledger must be exactly what
running the requests one after the other would have produced: numbers
1..N, each request once, each with the number its client was told.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import database_url

from .support import Gunicorn, Serve, app_tables

RETRY_APP = Path(__file__).with_name("retry_app.py")
SERVED = {"flask": "retry_app:flask_app", "bottle": "retry_app:bottle_wsgi"}
REQUESTS = 48
CLIENTS = 16

pytestmark = pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)


@pytest.fixture
def ledger(db_name: str, tmp_path: Path) -> Iterator[str]:
    url = database_url(db_name, tmp_path)
    with app_tables(RETRY_APP, url):
        yield url


def serve(
    gunicorn: Serve,
    database: str,
    framework: str,
    retries: int,
    env: dict[str, str] | None = None,
) -> Gunicorn:
    """The ledger on ``framework``, in 2 workers of 8 threads each."""
    return gunicorn(
        SERVED[framework],
        database=database,
        worker_class="gthread",
        workers=2,
        threads=8,
        env={"RETRIES": str(retries), **(env or {})},
    )


def burst(server: Gunicorn) -> dict[str, tuple[int, int | None]]:
    """Send the requests concurrently; request id -> (status, number told to the client)."""
    ids = [uuid.uuid4().hex for _ in range(REQUESTS)]

    def post(request_id: str) -> tuple[int, int | None]:
        reply = server.post_json("/entries", {"request": request_id})
        return reply.status, (reply.json()["number"] if reply.status == 201 else None)

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return dict(zip(ids, pool.map(post, ids), strict=True))


def stored(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT request, number FROM retry_ledger"))
            return {row[0]: row[1] for row in rows}
    finally:
        engine.dispose()


@pytest.mark.parametrize("framework", ["flask", "bottle"])
def test_conflicting_serializable_requests_all_succeed_as_if_run_one_by_one(
    gunicorn: Serve, ledger: str, framework: str
) -> None:
    check_serial_ledger(serve(gunicorn, ledger, framework, retries=30), ledger)


def check_serial_ledger(server: Gunicorn, ledger: str) -> None:
    """A burst at ``server``: every request ends 201, the ledger equals a serial run."""
    replies = burst(server)
    assert sorted(status for status, _ in replies.values()) == [201] * REQUESTS
    ledger_rows = stored(ledger)
    assert sorted(ledger_rows.values()) == list(range(1, REQUESTS + 1))
    assert ledger_rows == {request: number for request, (_, number) in replies.items()}
    retried = server.log.read_text().count("failed with a transient error")
    assert retried > 0, "no request conflicted: the test proved nothing"


@pytest.mark.parametrize("framework", ["flask", "bottle"])
def test_without_retries_conflicting_requests_fail_and_leave_nothing(
    gunicorn: Serve, ledger: str, framework: str
) -> None:
    replies = burst(serve(gunicorn, ledger, framework, retries=0))
    statuses = sorted({status for status, _ in replies.values()})
    assert statuses == [201, 500], "expected some requests to lose a serialization conflict"
    committed = {request: number for request, (status, number) in replies.items() if status == 201}
    ledger_rows = stored(ledger)
    assert ledger_rows == committed
    assert sorted(ledger_rows.values()) == list(range(1, len(committed) + 1))
