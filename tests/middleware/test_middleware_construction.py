"""Contract point 1: misuse is refused when the middleware is built, not at the first request."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from wsgi_sqla import SessionMiddleware


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


@pytest.fixture
def scoped() -> scoped_session[Session]:
    return scoped_session(sessionmaker(bind=create_engine("sqlite://")))


def test_app_that_is_not_callable_is_refused(scoped: Any) -> None:
    with pytest.raises(TypeError, match=r"app must be a WSGI application \(a callable\)"):
        SessionMiddleware("not an app", scoped)  # type: ignore[arg-type]


def test_plain_session_is_refused_naming_the_argument() -> None:
    plain = Session(bind=create_engine("sqlite://"))
    with pytest.raises(
        TypeError,
        match=r"argument 0 must be a sqlalchemy.orm.scoped_session, got sqlalchemy.orm.sess",
    ):
        SessionMiddleware(app, plain)  # type: ignore[arg-type]


def test_sessionmaker_is_refused_with_the_fix_in_the_message() -> None:
    factory = sessionmaker(bind=create_engine("sqlite://"))
    with pytest.raises(
        TypeError, match=r"got sqlalchemy.orm.session.sessionmaker; wrap your sessionmaker"
    ):
        SessionMiddleware(app, factory)  # type: ignore[arg-type]


def test_second_session_that_is_not_scoped_is_refused_naming_its_position(scoped: Any) -> None:
    with pytest.raises(TypeError, match=r"session argument 1 must be"):
        SessionMiddleware(app, scoped, object())  # type: ignore[arg-type]


def test_no_session_at_all_is_refused() -> None:
    with pytest.raises(TypeError, match=r"needs at least one sqlalchemy.orm.scoped_session"):
        SessionMiddleware(app)


def test_non_callable_veto_is_refused(scoped: Any) -> None:
    with pytest.raises(TypeError, match=r"commit_veto must be a callable"):
        SessionMiddleware(app, scoped, commit_veto=True)  # type: ignore[arg-type]


def test_several_scoped_sessions_are_accepted(scoped: Any) -> None:
    other = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    middleware = SessionMiddleware(app, scoped, other)
    assert middleware.sessions == (scoped, other)


def test_the_same_session_given_twice_is_refused(scoped: Any) -> None:
    with pytest.raises(ValueError, match=r"argument 1 is the same scoped_session as argument 0"):
        SessionMiddleware(app, scoped, scoped)
