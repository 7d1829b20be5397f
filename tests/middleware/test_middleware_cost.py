"""Contract point 9: what a request costs in Sessions, pool checkouts and SQL.

Counts are exact and read from SQLAlchemy's own events
(:func:`wsgi_sqla.testing.count_round_trips`), so they can be asserted;
timings are measured in bench/, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import Models, answering, serve

from wsgi_sqla import SessionMiddleware
from wsgi_sqla.testing import RoundTrips, count_round_trips

Work = Callable[[scoped_session[Any], Models], None]


def nothing(session: scoped_session[Any], models: Models) -> None:
    pass


def read(session: scoped_session[Any], models: Models) -> None:
    session.execute(select(models.User).where(models.User.id == 1)).first()


def insert(session: scoped_session[Any], models: Models) -> None:
    session.add(models.User(name="ann"))


def flushed_insert(session: scoped_session[Any], models: Models) -> None:
    insert(session, models)
    session.flush()


class Created:
    """How many Session objects were created."""

    sessions = 0


@pytest.fixture
def counted_session(engine: Engine, models: Models) -> Iterator[tuple[Any, Created]]:
    """A scoped session whose Session objects are counted, on a connected engine."""
    with engine.connect():
        pass  # the dialect's first-connect queries are not the request's
    created = Created()

    class CountedSession(Session):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            created.sessions += 1
            super().__init__(*args, **kwargs)

    scoped = scoped_session(sessionmaker(bind=engine, class_=CountedSession))
    yield scoped, created
    scoped.remove()


# The pool's reset on return (``resets``) is a no-op on psycopg outside a
# transaction, a real ROLLBACK on PyMySQL; the hand-written code pays it too.
COMMITTED = RoundTrips(statements=1, begin=1, commit=1, checkouts=1, resets=1)


@pytest.mark.parametrize(
    ("work", "status", "sessions", "cost"),
    [
        pytest.param(nothing, "200 OK", 0, RoundTrips(), id="never-touches-the-database"),
        pytest.param(read, "200 OK", 1, COMMITTED, id="read"),
        pytest.param(insert, "201 Created", 1, COMMITTED, id="insert"),
        pytest.param(
            flushed_insert,
            "400 Bad Request",
            1,
            RoundTrips(statements=1, begin=1, rollback=1, checkouts=1, resets=1),
            id="flushed-insert-then-400",
        ),
        pytest.param(insert, "400 Bad Request", 1, RoundTrips(), id="unflushed-insert-then-400"),
    ],
)
def test_request_costs_exactly(
    counted_session: tuple[Any, Created],
    models: Models,
    engine: Engine,
    work: Work,
    status: str,
    sessions: int,
    cost: RoundTrips,
) -> None:
    session, created = counted_session
    app = SessionMiddleware(answering(status, lambda: work(session, models)), session)
    with count_round_trips(engine) as counts:
        assert serve(app).status == status
    assert counts == cost
    assert created.sessions == sessions
