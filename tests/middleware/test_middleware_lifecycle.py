"""Contract points 5, 6, 8 and 10: streaming, close(), cleanup, stale sessions, logging."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from support import ClosingBody, FakeServer, Models, Probe, ignore_response

from wsgi_sqla import SessionMiddleware, StaleSessionWarning, current_unit


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
    session: Any, models: Models, fake_server: FakeServer
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

    seen = fake_server(SessionMiddleware(app, session))
    assert seen.error is None
    assert seen.body == b"ann:hello"


def test_work_done_while_streaming_is_committed_at_close(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    seen = fake_server(SessionMiddleware(streaming(models), session))
    assert seen.events[0] == ("start_response", ("200 OK", ["ann"]))
    assert probe.names() == ["ann", "tail"]


@pytest.mark.parametrize(
    ("options", "served", "kept", "error"),
    [
        pytest.param({"fail": True}, {}, ["ann"], RuntimeError, id="iteration-raises"),
        pytest.param({"status": "400 Bad Request"}, {}, [], None, id="error-status"),
        pytest.param({}, {"disconnect_after": 2}, ["ann"], None, id="client-disconnects"),
    ],
)
def test_work_done_while_streaming_is_rolled_back_unless_the_body_ends_cleanly(
    session: Any,
    models: Models,
    probe: Probe,
    fake_server: FakeServer,
    options: dict[str, Any],
    served: dict[str, Any],
    kept: list[str],
    error: type[Exception] | None,
) -> None:
    seen = fake_server(SessionMiddleware(streaming(models, **options), session), **served)
    assert type(seen.error) is (error or type(None))
    assert probe.names() == kept
    assert probe.checked_out() == 0


@pytest.mark.parametrize("served", [{}, {"disconnect_after": 1}], ids=["read-to-end", "cut-short"])
def test_the_requests_unit_is_current_in_every_chunk_and_in_close(
    session: Any, models: Models, fake_server: FakeServer, served: dict[str, Any]
) -> None:
    units: dict[str, object] = {}

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        units["call"] = current_unit()
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                units["first chunk"] = current_unit()
                yield b"a"
                units["second chunk"] = current_unit()
                yield b"b"
            finally:  # at the end of the body, or in close() when the client left
                units["end"] = current_unit()

        return body()

    fake_server(SessionMiddleware(app, session), **served)
    assert units["call"] is not None
    assert {name: unit is units["call"] for name, unit in units.items()} == {
        name: True for name in units
    }
    assert current_unit() is None


def test_context_variables_the_body_sets_last_from_chunk_to_chunk(
    session: Any, models: Models, fake_server: FakeServer
) -> None:
    # What Flask's stream_with_context relies on: a token set in one chunk is
    # reset in a later one, in the same context.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("test_body_var", default="unset")
    seen: list[str] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            token = var.set("set in the first chunk")
            yield b"a"
            seen.append(var.get())
            var.reset(token)
            yield b"b"

        return body()

    exchange = fake_server(SessionMiddleware(app, session))
    assert exchange.error is None
    assert seen == ["set in the first chunk"]


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


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param({}, id="normal-end"),
        pytest.param({"fail_at": 1}, id="error-while-iterating"),
        pytest.param({"disconnect_after": 1}, id="client-disconnect"),
        pytest.param({"status": "500 Internal Server Error"}, id="error-status"),
    ],
)
def test_application_iterable_is_closed_exactly_once(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, outcome: dict[str, Any]
) -> None:
    options = dict(outcome)
    body = ClosingBody([b"a", b"b"], fail_at=options.pop("fail_at", None))
    status = options.pop("status", "200 OK")

    def app(environ: Any, start_response: Any) -> ClosingBody:
        models.User(name="ann").save()
        start_response(status, [])
        return body

    fake_server(SessionMiddleware(app, session), **options)
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

    response: Any = SessionMiddleware(app, session)({"PATH_INFO": "/"}, ignore_response)
    list(response)
    response.close()
    response.close()
    assert body.closes == 1


def test_application_close_that_raises_still_removes_the_session(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
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

    response: Any = SessionMiddleware(app, session)({"PATH_INFO": "/"}, ignore_response)
    list(response)
    with pytest.raises(OSError, match="close failed"):
        response.close()
    assert body.closes == 1
    assert probe.names() == ["ann"], "work done by a failing close() must not commit"
    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_session_left_by_a_server_that_never_closed_is_rolled_back_with_a_warning(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    middleware = SessionMiddleware(streaming(models), session)
    fake_server(middleware, close=False)
    assert session.registry.has(), "precondition: the tail's session is still there"

    def next_app(environ: Any, start_response: Any) -> list[bytes]:
        assert not session.registry.has(), "the stale session was handed to the next request"
        models.User(name="next").save()
        start_response("200 OK", [])
        return [b""]

    with pytest.warns(StaleSessionWarning, match="rolled back and removed"):
        fake_server(SessionMiddleware(next_app, session))
    assert probe.names() == ["ann", "next"], "the unclosed request's tail must not commit"
    assert probe.checked_out() == 0


def test_decision_and_reason_are_logged_at_debug(
    session: Any, models: Models, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        session.execute(select(1))
        if environ["PATH_INFO"] == "/raise":
            raise LookupError("view failed")
        start_response(environ["PATH_INFO"].strip("/").replace("-", " "), [])
        return [b""]

    with caplog.at_level(logging.DEBUG, logger="wsgi_sqla"):
        fake_server(SessionMiddleware(app, session), path="/201-Created")
        fake_server(SessionMiddleware(app, session), path="/404-Not-Found")
        fake_server(SessionMiddleware(app, session), path="/raise")
    messages = [r.getMessage() for r in caplog.records if r.name == "wsgi_sqla"]
    assert messages == [
        "committed /201-Created (status): 201 Created",
        "rolled back /404-Not-Found (status): 404 Not Found",
        "rolled back /raise (the application raised)",
        "GET /raise failed; answered 500, the exception is raised again from close()",
    ]
