"""Round trips per request: SessionMiddleware against the hand-written lower bound.

Timings belong to the benchmark (``python -m bench``); what can be asserted
is the number of messages a request exchanges with the database, which is
exact. Each test serves one request through SessionMiddleware and the same
request through a hand-written application that commits (or rolls back) and
removes the session itself, the least any correct code can do, and counts
both with the counter the benchmark uses too
(:func:`wsgi_sqla.testing.count_round_trips`: statements,
BEGIN/COMMIT/ROLLBACK, pool checkouts, pool resets). The middleware must
never cost a round trip more than the hand-written version. The absolute
counts are pinned by ``tests/middleware/test_middleware_cost.py``.

The hand-written application is the reference being compared against, so
it necessarily spells out its own commit/rollback/remove.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from support import Boom, serve

from wsgi_sqla import SessionMiddleware
from wsgi_sqla.testing import RoundTrips, count_round_trips

Work = Callable[[], bytes]

_names = itertools.count()


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


def _serve(app: Any, engine: Engine, status: str) -> RoundTrips:
    """Round trips of one request to ``app``."""
    with count_round_trips(engine) as counts:
        assert serve(app).status == status
    return counts


def _read(session: Any, models: Any, engine: Engine) -> Work:
    with engine.begin() as connection:
        user_id = connection.execute(
            insert(models.User).values(name="reader").returning(models.User.id)
        ).scalar_one()

    def work() -> bytes:
        return str(session.get(models.User, user_id).name).encode()

    return work


def _insert(session: Any, models: Any, engine: Engine) -> Work:
    def work() -> bytes:
        session.add(models.User(name=f"user{next(_names)}"))
        session.flush()
        return b"created"

    return work


@pytest.mark.parametrize(
    ("make_work", "status", "users_after"),
    [
        pytest.param(_read, "200 OK", 1, id="read"),
        pytest.param(_insert, "201 Created", 2, id="insert"),
        pytest.param(_insert, "400 Bad Request", 0, id="insert-then-400"),
    ],
)
def test_request_costs_no_round_trip_beyond_the_hand_written_lower_bound(
    engine: Engine,
    session: Any,
    models: Any,
    probe: Any,
    make_work: Callable[[Any, Any, Engine], Work],
    status: str,
    users_after: int,
) -> None:
    work = make_work(session, models, engine)
    ours = _serve(SessionMiddleware(_plain(work, status), session), engine, status)
    lower = _serve(_hand_written(work, status, session), engine, status)
    assert ours == lower
    assert ours.statements >= 1, "the request must have reached the database"
    # Both requests did their work: both inserts stayed, or neither did.
    assert probe.count("wsgi_sqla_users") == users_after
    assert probe.checked_out() == 0


def test_vetoed_request_that_never_touches_the_database_costs_no_round_trip(
    engine: Engine, session: Any, probe: Any
) -> None:
    status = "404 Not Found"
    ours = _serve(SessionMiddleware(_plain(lambda: b"no", status), session), engine, status)
    assert ours == RoundTrips()
    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_round_trip_counter_counts_only_while_its_block_runs(engine: Engine) -> None:
    def one_transaction() -> None:
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))

    one_transaction()  # the dialect's first-connect queries are not counted below
    with count_round_trips(engine) as counts:
        one_transaction()
    with pytest.raises(Boom), count_round_trips(engine) as failed:
        raise Boom
    one_transaction()

    assert counts == RoundTrips(statements=1, begin=1, commit=1, checkouts=1, resets=1)
    assert failed == RoundTrips(), "a block that raised left its listeners behind"
