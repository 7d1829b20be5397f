"""Contract points 3 and 4: committing, failing to commit, and several sessions.

A foreign key declared DEFERRABLE INITIALLY DEFERRED is checked only at
COMMIT, so a request can pass every flush and still fail to commit. That is
the case the hand-written ``after_request`` pattern gets wrong: here the
client must never see the application's 2xx for it. SQLite and PostgreSQL
have deferrable constraints; MariaDB has none, so there a failure injected
into ``Session.commit`` (a ``before_commit`` listener) plays the same part.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import STYLES, ClosingBody, FakeServer, Models, Probe, Style, answering, make_engine

from wsgi_sqla import SessionMiddleware


@pytest.fixture
def dangling(models: Models, engine: Engine) -> Any:
    """Adds a user and a pledge to a missing user: every flush passes, COMMIT fails."""
    if engine.dialect.name in ("mysql", "mariadb"):
        pytest.skip("MariaDB has no deferrable constraints; see the before_commit tests")

    def add() -> None:
        models.User(name="ann").save()
        models.Pledge(user_id=987654).save()

    return add


def failing_commit(scoped: scoped_session[Any]) -> None:
    """Make every commit of ``scoped``'s sessions fail, as a lost connection at COMMIT would."""

    def refuse(session: Session) -> None:
        raise RuntimeError("COMMIT refused")

    event.listen(scoped.session_factory, "before_commit", refuse)


@pytest.fixture(params=["deferred-foreign-key", "refused-commit"])
def doomed(
    request: pytest.FixtureRequest, session: Any, models: Models
) -> tuple[Callable[[], None], type[Exception]]:
    """Work whose COMMIT fails, and the error it fails with.

    A deferred foreign key fails in the database itself (not on MariaDB); a
    refused commit plays a connection lost at COMMIT, on every database.
    """
    if request.param == "deferred-foreign-key":
        return request.getfixturevalue("dangling"), IntegrityError
    failing_commit(session)
    return (lambda: models.User(name="ann").save()), RuntimeError


@pytest.mark.parametrize("style", STYLES)
def test_commit_failure_never_reaches_the_client_as_2xx(
    session: Any,
    doomed: tuple[Callable[[], None], type[Exception]],
    probe: Probe,
    fake_server: FakeServer,
    style: Style,
) -> None:
    work, error = doomed
    seen = fake_server(SessionMiddleware(answering("200 OK", work, style=style), session))
    assert isinstance(seen.error, error)
    handed_over = [
        value for kind, value in seen.events if kind in ("start_response", "write", "chunk")
    ]
    # Only the middleware's own 500 reaches the server.
    assert handed_over == [("500 Internal Server Error", []), b"Internal Server Error\n"]
    assert seen.client_status.startswith("500")
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_commit_failure_propagates_through_webtest(
    session: Any, dangling: Any, probe: Probe
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        dangling()
        start_response("201 Created", [])
        return [b"created"]

    with pytest.raises(IntegrityError):
        webtest.TestApp(SessionMiddleware(app, session)).get("/")
    assert probe.names() == []


def test_commit_failure_swallowed_by_the_application_still_fails_the_request(
    session: Any, dangling: Any, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        dangling()
        write = start_response("200 OK", [])
        with contextlib.suppress(IntegrityError):
            write(b"created")
        return [b"all good?"]

    seen = fake_server(SessionMiddleware(app, session))
    assert isinstance(seen.error, IntegrityError)
    assert seen.status == "500 Internal Server Error"
    assert probe.names() == []


def test_commit_failure_closes_the_body_once_and_leaks_no_connection(
    session: Any, dangling: Any, probe: Probe, fake_server: FakeServer
) -> None:
    body = ClosingBody([b"created"])

    def app(environ: Any, start_response: Any) -> ClosingBody:
        dangling()
        start_response("200 OK", [])
        return body

    fake_server(SessionMiddleware(app, session))
    assert body.closes == 1
    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_commit_failure_is_logged_with_its_traceback(
    session: Any, dangling: Any, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        dangling()
        start_response("200 OK", [])
        return [b""]

    with caplog.at_level(logging.ERROR, logger="wsgi_sqla"):
        fake_server(SessionMiddleware(app, session))
    [record] = [r for r in caplog.records if r.name == "wsgi_sqla"]
    assert "commit failed" in record.getMessage()
    assert "'200 OK'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is IntegrityError


@pytest.fixture
def second(
    engine: Engine, models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[scoped_session[Any]]:
    """A second scoped session with its own registry.

    On PostgreSQL and MariaDB it shares the database; SQLite allows one writer
    per file, so there it gets a database file of its own.
    """
    other = engine
    if engine.dialect.name == "sqlite":
        other = make_engine(f"sqlite:///{tmp_path_factory.mktemp('second')}/second.sqlite3")
        models.Base.metadata.create_all(other)
    scoped = scoped_session(sessionmaker(bind=other))
    yield scoped
    scoped.remove()
    if other is not engine:
        other.dispose()


def both_write(models: Models, first: Any, second: Any, status: str = "200 OK") -> Any:
    """An application that adds a user in each session, then answers ``status``."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        first.add(models.User(name="in-first"))
        second.add(models.User(name="in-second"))
        start_response(status, [])
        return [b""]

    return SessionMiddleware(app, first, second)


def committed(probe: Probe, second: scoped_session[Any]) -> set[str]:
    """User names committed in the first and the second session's databases."""
    return set(probe.names()) | set(Probe(second.session_factory.kw["bind"]).names())


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        pytest.param("200 OK", {"in-first", "in-second"}, id="all-commit"),
        pytest.param("400 Bad Request", set(), id="all-roll-back"),
    ],
)
def test_several_sessions_share_the_decision(
    session: Any, second: Any, models: Models, probe: Probe, status: str, kept: set[str]
) -> None:
    webtest.TestApp(both_write(models, session, second, status)).get("/", status="*")
    assert committed(probe, second) == kept
    assert not session.registry.has() and not second.registry.has()
    assert probe.checked_out() == 0
    assert Probe(second.session_factory.kw["bind"]).checked_out() == 0


def test_flush_error_in_a_later_session_commits_no_session(
    session: Any, second: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    second.add(models.User(name="taken"))
    second.commit()
    second.remove()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        session.add(models.User(name="in-first"))
        second.add(models.User(name="taken"))  # unique violation, raised at flush
        start_response("200 OK", [])
        return [b""]

    seen = fake_server(SessionMiddleware(app, session, second))
    assert isinstance(seen.error, IntegrityError)
    assert seen.status == "500 Internal Server Error"
    assert committed(probe, second) == {"taken"}, "nothing may commit before all flushed"


@pytest.mark.parametrize(
    ("failing", "kept"),
    [
        # No two-phase commit: the first session's COMMIT stands.
        pytest.param("second", {"in-first"}, id="second-leaves-the-first-committed"),
        pytest.param("first", set(), id="first-rolls-back-the-second"),
    ],
)
def test_commit_failure_in_one_of_several_sessions_fails_the_request(
    session: Any,
    second: Any,
    models: Models,
    probe: Probe,
    fake_server: FakeServer,
    failing: str,
    kept: set[str],
) -> None:
    failing_commit({"first": session, "second": second}[failing])

    seen = fake_server(both_write(models, session, second))
    assert isinstance(seen.error, RuntimeError)
    assert seen.status == "500 Internal Server Error"
    assert committed(probe, second) == kept
    assert probe.checked_out() == 0
