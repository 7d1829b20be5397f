"""Contract point 9: what a request costs in Sessions, pool checkouts and SQL.

Counts are exact and read from SQLAlchemy's own events, so they can be
asserted; timings are measured in bench/, never here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from conftest import Models
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from wsgi_sqla import SessionMiddleware


class Tally:
    """Counts Session objects, pool checkouts, statements, COMMITs and ROLLBACKs."""

    def __init__(self, engine: Engine) -> None:
        self.counts: Counter[str] = Counter()
        tally = self

        class CountedSession(Session):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                tally.counts["sessions"] += 1
                super().__init__(*args, **kwargs)

        self.session_class = CountedSession
        self._listeners = [
            (engine.pool, "checkout", self._count("checkouts")),
            (engine, "before_cursor_execute", self._count("statements")),
            (engine, "commit", self._count("commits")),
            (engine, "rollback", self._count("rollbacks")),
        ]
        for target, name, fn in self._listeners:
            event.listen(target, name, fn)

    def _count(self, key: str) -> Any:
        def listener(*args: Any, **kwargs: Any) -> None:
            self.counts[key] += 1

        return listener

    def remove(self) -> None:
        for target, name, fn in self._listeners:
            event.remove(target, name, fn)


@pytest.fixture
def tally(engine: Engine, models: Models) -> Iterator[Tally]:
    with engine.connect():
        pass  # the dialect's first-connect queries are not the request's
    counted = Tally(engine)
    yield counted
    counted.remove()


@pytest.fixture
def counted_session(engine: Engine, tally: Tally) -> Iterator[scoped_session[Any]]:
    scoped = scoped_session(sessionmaker(bind=engine, class_=tally.session_class))
    yield scoped
    scoped.remove()


def run(app: Any, session: Any, status: int = 200) -> None:
    webtest.TestApp(SessionMiddleware(app, session)).get("/", status=status)


def test_request_that_never_touches_the_database_costs_nothing(
    counted_session: Any, tally: Tally
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"no database here"]

    run(app, counted_session)
    assert tally.counts == Counter()


def test_read_costs_one_checkout_one_statement_one_commit(
    counted_session: Any, tally: Tally, models: Models
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        counted_session.execute(select(models.User).where(models.User.id == 1)).first()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    run(app, counted_session)
    assert tally.counts == Counter(sessions=1, checkouts=1, statements=1, commits=1)


def test_insert_costs_one_checkout_one_statement_one_commit(
    counted_session: Any, tally: Tally, models: Models
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        counted_session.add(models.User(name="ann"))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b""]

    run(app, counted_session, 201)
    assert tally.counts == Counter(sessions=1, checkouts=1, statements=1, commits=1)


def test_insert_that_ends_400_costs_one_statement_and_one_rollback(
    counted_session: Any, tally: Tally, models: Models
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        counted_session.add(models.User(name="ann"))
        counted_session.flush()
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b""]

    run(app, counted_session, 400)
    assert tally.counts == Counter(sessions=1, checkouts=1, statements=1, rollbacks=1)


def test_unflushed_work_that_ends_400_sends_no_statement(
    counted_session: Any, tally: Tally, models: Models
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        counted_session.add(models.User(name="ann"))
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b""]

    run(app, counted_session, 400)
    assert tally.counts == Counter(sessions=1)
