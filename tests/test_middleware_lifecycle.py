"""Contract points 5, 6, 8 and 10: streaming, close(), cleanup, stale sessions, logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ClosingBody, Models, Probe, Server
from sqlalchemy import select

from wsgi_sqla import SessionMiddleware, StaleSessionWarning


def streaming(models: Models, status: str = "200 OK", fail: bool = False) -> Any:
    """Saves "ann" before the decision and "tail" while the body streams."""

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response(status, [])

        def body() -> Iterator[bytes]:
            yield b"head;"
            models.User(name="tail").save()
            if fail:
                raise RuntimeError("the stream broke")
            yield b"tail;"

        return body()

    return app


def test_sessions_stay_usable_while_the_body_streams(
    session: Any, models: Models, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        user = models.User(name="ann").save()
        models.Post(title="hello", author=user).save()
        start_response("200 OK", [])

        def template() -> Iterator[bytes]:
            # After the commit everything is expired: these are fresh lazy loads.
            yield user.name.encode()
            for post in user.posts:
                yield b":" + post.title.encode()

        return template()

    seen = server.request(SessionMiddleware(app, session))
    assert seen.error is None
    assert seen.body == b"ann:hello"


def test_work_done_while_streaming_is_committed_at_close(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    seen = server.request(SessionMiddleware(streaming(models), session))
    assert seen.events[0] == ("start_response", ("200 OK", ["ann"]))
    assert probe.names() == ["ann", "tail"]


def test_work_done_while_streaming_is_rolled_back_when_iteration_raises(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    seen = server.request(SessionMiddleware(streaming(models, fail=True), session))
    assert isinstance(seen.error, RuntimeError)
    assert probe.names() == ["ann"]


def test_work_done_while_streaming_is_rolled_back_when_the_response_was(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    server.request(SessionMiddleware(streaming(models, status="400 Bad Request"), session))
    assert probe.names() == []


def test_work_done_while_streaming_is_rolled_back_when_the_client_disconnects(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one;"
        models.User(name="tail").save()
        yield b"two;"
        yield b"three;"

    seen = server.request(SessionMiddleware(app, session), disconnect_after=2)
    assert seen.body == b"one;two;"
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_body_is_streamed_not_buffered(session: Any, models: Models) -> None:
    produced: list[str] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        for part in ("a", "b", "c"):
            produced.append(part)
            yield part.encode()

    body = SessionMiddleware(app, session)({"PATH_INFO": "/"}, lambda *a: lambda d: None)
    chunks = iter(body)
    assert next(chunks) == b"a"
    assert produced == ["a"], "the middleware read ahead of the server"
    assert next(chunks) == b"b"
    assert produced == ["a", "b"]
    body.close()  # type: ignore[attr-defined]


OUTCOMES = {
    "normal end": {},
    "error while iterating": {"fail_at": 1},
    "client disconnect": {"disconnect_after": 1},
    "error status": {"status": "500 Internal Server Error"},
}


@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_application_iterable_is_closed_exactly_once(
    session: Any, models: Models, probe: Probe, server: Server, outcome: str
) -> None:
    options = dict(OUTCOMES[outcome])
    body = ClosingBody([b"a", b"b"], fail_at=options.pop("fail_at", None))
    status = options.pop("status", "200 OK")

    def app(environ: Any, start_response: Any) -> ClosingBody:
        models.User(name="ann").save()
        start_response(status, [])
        return body

    server.request(SessionMiddleware(app, session), **options)
    assert body.closes == 1
    assert not session.registry.has(), "the session was not removed"
    assert probe.checked_out() == 0


def test_server_calling_close_twice_closes_the_application_once(
    session: Any, models: Models
) -> None:
    body = ClosingBody([b"a"])

    def app(environ: Any, start_response: Any) -> ClosingBody:
        start_response("200 OK", [])
        return body

    response: Any = SessionMiddleware(app, session)({"PATH_INFO": "/"}, lambda *a: None)
    list(response)
    response.close()
    response.close()
    assert body.closes == 1


def test_application_close_that_raises_still_removes_the_session(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    class BadClose(ClosingBody):
        def close(self) -> None:
            super().close()
            models.User(name="during-close").save()
            raise OSError("close failed")

    body = BadClose([b"a"])

    def app(environ: Any, start_response: Any) -> BadClose:
        models.User(name="ann").save()
        start_response("200 OK", [])
        return body

    response: Any = SessionMiddleware(app, session)({"PATH_INFO": "/"}, lambda *a: None)
    list(response)
    with pytest.raises(OSError, match="close failed"):
        response.close()
    assert body.closes == 1
    assert probe.names() == ["ann"], "work done by a failing close() must not commit"
    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_session_left_by_a_server_that_never_closed_is_rolled_back_with_a_warning(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    middleware = SessionMiddleware(streaming(models), session)
    server.request(middleware, close=False)
    assert session.registry.has(), "precondition: the tail's session is still there"

    def next_app(environ: Any, start_response: Any) -> list[bytes]:
        assert not session.registry.has(), "the stale session was handed to the next request"
        models.User(name="next").save()
        start_response("200 OK", [])
        return [b""]

    with pytest.warns(StaleSessionWarning, match="rolled back and removed"):
        server.request(SessionMiddleware(next_app, session))
    assert probe.names() == ["ann", "next"], "the unclosed request's tail must not commit"
    assert probe.checked_out() == 0


def test_decision_and_reason_are_logged_at_debug(
    session: Any, models: Models, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        session.execute(select(1))
        if environ["PATH_INFO"] == "/raise":
            raise LookupError("view failed")
        start_response(environ["PATH_INFO"].strip("/").replace("-", " "), [])
        return [b""]

    with caplog.at_level(logging.DEBUG, logger="wsgi_sqla"):
        server.request(SessionMiddleware(app, session), "/201-Created")
        server.request(SessionMiddleware(app, session), "/404-Not-Found")
        server.request(SessionMiddleware(app, session), "/raise")
    messages = [r.getMessage() for r in caplog.records if r.name == "wsgi_sqla"]
    assert messages == [
        "committed /201-Created (not vetoed): 201 Created",
        "rolled back /404-Not-Found (vetoed): 404 Not Found",
        "rolled back /raise (the application raised)",
        "GET /raise failed; answered 500, the exception is raised again from close()",
    ]
