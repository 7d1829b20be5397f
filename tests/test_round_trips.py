"""Round trips per request: what SessionMiddleware costs the database, exactly.

Timings belong to the benchmark (``python -m bench``); what can be asserted
is the number of messages a request exchanges with the database, which is
exact. Each test serves one request through SessionMiddleware and the same
request through a hand-written application that commits (or rolls back) and
removes the session itself, the least any correct code can do, and counts
with SQLAlchemy events: cursor executions, BEGIN/COMMIT/ROLLBACK, pool
checkouts. The middleware must never cost a statement more than the hand
version, and a request that never touches the database must cost nothing.

The hand-written application is the reference being compared against, so
it necessarily spells out its own commit/rollback/remove.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import webtest  # type: ignore[import-untyped]
from sqlalchemy import Engine, event, insert

from wsgi_sqla import SessionMiddleware

Work = Callable[[], bytes]

_names = itertools.count()

NOTHING = {"statements": 0, "begin": 0, "commit": 0, "rollback": 0, "checkouts": 0}


@contextmanager
def _counting(engine: Engine) -> Iterator[dict[str, int]]:
    counts = dict.fromkeys(NOTHING, 0)

    def counter(key: str) -> Callable[..., None]:
        def count(*_args: Any) -> None:
            counts[key] += 1

        return count

    listeners = [
        (engine, "before_cursor_execute", counter("statements")),
        (engine, "begin", counter("begin")),
        (engine, "commit", counter("commit")),
        (engine, "rollback", counter("rollback")),
        (engine.pool, "checkout", counter("checkouts")),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield counts
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


def _plain(work: Work, status: str) -> Any:
    """A WSGI app that does ``work`` and answers ``status``, ending nothing itself."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        body = work()
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


def _hand_written(work: Work, status: str, session: Any) -> Any:
    """The lower bound: the same app committing or rolling back and removing by hand."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            body = work()
            if status < "400":
                session.commit()
            else:
                session.rollback()
            start_response(status, [("Content-Type", "text/plain")])
            return [body]
        finally:
            session.remove()

    return app


def _serve(app: Any, engine: Engine, status: str) -> dict[str, int]:
    """Round trips of one request to ``app``."""
    client = webtest.TestApp(app)
    with _counting(engine) as counts:
        client.get("/", status=int(status[:3]))
    return counts


def _both(engine: Engine, session: Any, work: Work, status: str) -> tuple[dict[str, int], ...]:
    """Round trips of SessionMiddleware and of the hand-written app, same work."""
    ours = _serve(SessionMiddleware(_plain(work, status), session), engine, status)
    lower = _serve(_hand_written(work, status, session), engine, status)
    return ours, lower


@pytest.fixture
def user_id(models: Any, engine: Engine) -> int:
    """A user row written through its own connection, for the reads."""
    with engine.begin() as connection:
        new_id = connection.execute(
            insert(models.User).values(name="reader").returning(models.User.id)
        ).scalar_one()
    return int(new_id)


def _insert(session: Any, models: Any) -> Work:
    def work() -> bytes:
        session.add(models.User(name=f"user{next(_names)}"))
        session.flush()
        return b"created"

    return work


def test_request_that_never_touches_the_database_costs_no_round_trip(
    engine: Engine, session: Any, probe: Any
) -> None:
    ours = _serve(SessionMiddleware(_plain(lambda: b"ok", "200 OK"), session), engine, "200 OK")
    assert ours == NOTHING
    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_failed_request_that_never_touches_the_database_costs_no_round_trip(
    engine: Engine, session: Any
) -> None:
    status = "404 Not Found"
    ours = _serve(SessionMiddleware(_plain(lambda: b"no", status), session), engine, status)
    assert ours == NOTHING


def test_read_costs_no_round_trip_beyond_the_hand_written_lower_bound(
    engine: Engine, session: Any, models: Any, user_id: int, probe: Any
) -> None:
    def read() -> bytes:
        return str(session.get(models.User, user_id).name).encode()

    ours, lower = _both(engine, session, read, "200 OK")
    assert ours == lower
    assert ours == {"statements": 1, "begin": 1, "commit": 1, "rollback": 0, "checkouts": 1}
    assert probe.checked_out() == 0


def test_insert_costs_no_round_trip_beyond_the_hand_written_lower_bound(
    engine: Engine, session: Any, models: Any, probe: Any
) -> None:
    ours, lower = _both(engine, session, _insert(session, models), "201 Created")
    assert ours == lower
    assert ours == {"statements": 1, "begin": 1, "commit": 1, "rollback": 0, "checkouts": 1}
    assert probe.count("wsgi_sqla_users") == 2
    assert probe.checked_out() == 0


def test_insert_ending_400_costs_no_round_trip_beyond_the_hand_written_lower_bound(
    engine: Engine, session: Any, models: Any, probe: Any
) -> None:
    ours, lower = _both(engine, session, _insert(session, models), "400 Bad Request")
    assert ours == lower
    assert ours == {"statements": 1, "begin": 1, "commit": 0, "rollback": 1, "checkouts": 1}
    assert probe.count("wsgi_sqla_users") == 0
    assert probe.checked_out() == 0
