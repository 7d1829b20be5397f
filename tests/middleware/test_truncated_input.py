"""Rule 5 of issue 17: a request body shorter than its Content-Length is never committed.

The client announces ``Content-Length: 11``, sends ``amount=10`` (9 bytes)
and hangs up. Servers hand the application the short body; here the
server's ``wsgi.input`` is a :class:`io.BytesIO` holding those 9 bytes (what
gunicorn's and Werkzeug's inputs return for such a client: fewer bytes
than asked for, then ``b""``), or a stream whose read raises (a server
reporting the disconnect). The real client and server are in
tests/server/test_truncated_server.py.

Every application here saves what it parsed and answers 201; the database
is checked through the :class:`~support.Probe`, never the session under test.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import STYLES, ClosingBody, Exchange, FakeServer, Models, Probe, Style, serve
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request

from wsgi_sqla import Retry, SessionMiddleware, force_commit
from wsgi_sqla._input import REFUSED_BODY, CountedInput

SENT = b"amount=10"  # what came
ANNOUNCED = 11  # what the client's Content-Length said
COMPLETE = b"amount=100"  # a whole body, for the controls (announced as its own length)

Read = Callable[[Any], bytes]


def short(stream: Any = None, **extra: Any) -> dict[str, Any]:
    """The environ entries of a POST whose body stops 2 bytes before its Content-Length."""
    return {
        "wsgi.input": io.BytesIO(SENT) if stream is None else stream,
        "CONTENT_LENGTH": str(ANNOUNCED),
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        **extra,
    }


def complete(body: bytes = COMPLETE) -> dict[str, Any]:
    return {
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
    }


def post(app: Any, entries: dict[str, Any], fake_server: FakeServer) -> Exchange:
    return fake_server(app, method="POST", path="/pledges", environ=entries)


# -- how an application reads the body ----------------------------------------------------


def read_all(stream: Any) -> bytes:
    return bytes(stream.read())


def read_announced(stream: Any) -> bytes:
    return bytes(stream.read(ANNOUNCED))


def read_in_pieces(stream: Any) -> bytes:
    pieces = []
    while piece := stream.read(3):
        pieces.append(piece)
    return b"".join(pieces)


def read_lines(stream: Any) -> bytes:
    lines = []
    while line := stream.readline():
        lines.append(line)
    return b"".join(lines)


def read_readlines(stream: Any) -> bytes:
    return b"".join(stream.readlines())


def iterate(stream: Any) -> bytes:
    return b"".join(stream)


READERS = [
    pytest.param(read_all, id="read()"),
    pytest.param(read_announced, id="read(n)"),
    pytest.param(read_in_pieces, id="read(3)-until-empty"),
    pytest.param(read_lines, id="readline()"),
    pytest.param(read_readlines, id="readlines()"),
    pytest.param(iterate, id="iteration"),
]


def pledging(
    models: Models,
    read: Read = read_all,
    *,
    status: str = "201 Created",
    style: Style = "list",
    before: Callable[[], object] = lambda: None,
) -> Any:
    """Reads the body with ``read``, saves it as a user's name, answers ``status``."""
    headers = [("Content-Type", "text/plain")]

    def work(environ: Any) -> bytes:
        body = read(environ["wsgi.input"])
        models.User(name=body.decode() or "(empty)").save()
        before()
        return b"saved " + body

    def listing(environ: Any, start_response: Any) -> list[bytes]:
        body = work(environ)
        start_response(status, headers)
        return [body]

    def lazy(environ: Any, start_response: Any) -> Iterator[bytes]:
        body = work(environ)
        start_response(status, headers)
        yield body

    def writing(environ: Any, start_response: Any) -> list[bytes]:
        body = work(environ)
        start_response(status, headers)(body)
        return [b" and more"]

    return {"list": listing, "lazy": lazy, "write": writing}[style]


def assert_refused(seen: Exchange, probe: Probe) -> None:
    """400 with the middleware's own body, and nothing committed, then or later."""
    assert seen.error is None, seen.error
    assert seen.status == "400 Bad Request"
    assert seen.body == REFUSED_BODY
    assert dict(seen.headers)["Content-Length"] == str(len(REFUSED_BODY))
    assert dict(seen.headers)["Content-Type"].startswith("text/plain")
    assert seen.at_status == [], "committed before the status went out"
    assert probe.names() == []
    assert probe.checked_out() == 0


# -- a short body ------------------------------------------------------------------------


@pytest.mark.parametrize("read", READERS)
def test_a_short_body_is_answered_400_and_nothing_is_committed(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, read: Read
) -> None:
    seen = post(SessionMiddleware(pledging(models, read), session), short(), fake_server)
    assert_refused(seen, probe)


@pytest.mark.parametrize("style", STYLES)
def test_the_applications_body_does_not_go_out_with_the_400(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, style: Style
) -> None:
    app = pledging(models, style=style)
    seen = post(SessionMiddleware(app, session), short(), fake_server)
    assert_refused(seen, probe)
    assert seen.start_responses == 1


def test_a_short_body_parsed_by_werkzeug_is_answered_400(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def view(environ: Any, start_response: Any) -> list[bytes]:
        # Werkzeug's LimitedStream raises ClientDisconnected on the short read.
        models.User(name=Request(environ).form["amount"]).save()
        start_response("201 Created", [])
        return [b"saved"]

    seen = post(SessionMiddleware(view, session), short(), fake_server)
    assert_refused(seen, probe)


@pytest.mark.parametrize(
    ("status", "override", "veto"),
    [
        pytest.param("201 Created", None, None, id="201"),
        pytest.param("302 Found", None, None, id="302"),
        pytest.param("201 Created", force_commit, None, id="force_commit"),
        pytest.param("201 Created", None, lambda *args: False, id="veto-that-never-vetoes"),
        pytest.param("422 Unprocessable Entity", force_commit, None, id="422-force_commit"),
    ],
)
def test_nothing_says_commit_for_a_short_body(
    session: Any,
    models: Models,
    probe: Probe,
    fake_server: FakeServer,
    status: str,
    override: Callable[[], None] | None,
    veto: Any,
) -> None:
    app = pledging(models, status=status, before=override or (lambda: None))
    middleware = (
        SessionMiddleware(app, session)
        if veto is None
        else SessionMiddleware(app, session, commit_veto=veto)
    )
    seen = post(middleware, short(), fake_server)
    assert_refused(seen, probe)


def test_a_short_body_logs_one_warning_naming_the_request(
    session: Any, models: Models, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="wsgi_sqla"):
        post(SessionMiddleware(pledging(models), session), short(), fake_server)
    warnings = [r for r in caplog.records if r.name == "wsgi_sqla" and r.levelno >= logging.WARNING]
    [record] = warnings
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "POST /pledges" in message
    assert f"{len(SENT)} of {ANNOUNCED} bytes" in message


def test_the_applications_iterable_is_closed_once_when_refused(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    body = ClosingBody([b"saved"])

    def app(environ: Any, start_response: Any) -> ClosingBody:
        models.User(name=read_all(environ["wsgi.input"]).decode()).save()
        start_response("201 Created", [])
        return body

    seen = post(SessionMiddleware(app, session), short(), fake_server)
    assert_refused(seen, probe)
    assert body.closes == 1


# -- a read that raises ----------------------------------------------------------------------


class Disconnecting:
    """A server's input whose client went away: every read raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error

    def readline(self, size: int = -1) -> bytes:
        raise self.error


ERRORS = [
    pytest.param(lambda: ConnectionResetError("peer reset"), id="OSError"),
    pytest.param(ClientDisconnected, id="werkzeug-ClientDisconnected"),
]


@pytest.mark.parametrize("errors", ["respond", "propagate"])
@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("read", [read_all, read_lines], ids=["read()", "readline()"])
def test_a_read_that_raises_is_answered_400_not_500(
    session: Any,
    models: Models,
    probe: Probe,
    fake_server: FakeServer,
    error: Callable[[], Exception],
    read: Read,
    errors: str,
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="before-the-body").save()
        read(environ["wsgi.input"])  # raises, and the application lets it
        start_response("201 Created", [])
        return [b"saved"]

    stream = Disconnecting(error())
    seen = post(SessionMiddleware(app, session, errors=errors), short(stream), fake_server)
    assert_refused(seen, probe)


@pytest.mark.parametrize("error", ERRORS)
def test_a_read_that_raised_is_refused_even_if_the_application_goes_on(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, error: Any
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            body = environ["wsgi.input"].read()
        except Exception:
            body = b"amount=0"
        models.User(name=body.decode()).save()
        start_response("201 Created", [])
        return [b"saved"]

    seen = post(SessionMiddleware(app, session), short(Disconnecting(error())), fake_server)
    assert_refused(seen, probe)


def test_the_application_sees_the_read_error(session: Any, models: Models) -> None:
    raised: list[BaseException] = []
    error = ConnectionResetError("peer reset")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except Exception as exc:
            raised.append(exc)
        start_response("201 Created", [])
        return []

    serve(SessionMiddleware(app, session), method="POST", environ=short(Disconnecting(error)))
    assert raised == [error]


# -- retries on: the body is buffered before the application runs ----------------------------


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(lambda: io.BytesIO(SENT), id="short"),
        pytest.param(lambda: io.BytesIO(b""), id="empty"),
        pytest.param(lambda: Disconnecting(ConnectionResetError("peer reset")), id="read-raises"),
    ],
)
def test_with_retries_a_short_body_is_answered_400_without_running_the_view(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, stream: Any
) -> None:
    runs: list[bytes] = []

    def view(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(environ["wsgi.input"].read())
        models.User(name="replayed").save()
        start_response("201 Created", [])
        return [b"saved"]

    seen = post(SessionMiddleware(view, session, retry=Retry(2)), short(stream()), fake_server)
    assert runs == []
    assert_refused(seen, probe)


# -- the controls: what is not truncated ---------------------------------------------------


@pytest.mark.parametrize("read", READERS)
def test_a_complete_body_commits_however_it_is_read(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, read: Read
) -> None:
    seen = post(SessionMiddleware(pledging(models, read), session), complete(), fake_server)
    assert seen.status == "201 Created"
    assert probe.names() == [COMPLETE.decode()]


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda stream: b"unread", id="never-reads-it"),
        pytest.param(lambda stream: stream.read(len(COMPLETE) // 2), id="reads-half"),
        pytest.param(lambda stream: stream.readline(4), id="reads-one-short-line"),
    ],
)
def test_a_body_left_unread_is_not_truncated(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, read: Read
) -> None:
    seen = post(SessionMiddleware(pledging(models, read), session), complete(), fake_server)
    assert seen.status == "201 Created"
    assert len(probe.names()) == 1


def test_a_complete_body_commits_with_retries_on(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    app = pledging(models, read_in_pieces)
    seen = post(SessionMiddleware(app, session, retry=Retry(2)), complete(), fake_server)
    assert seen.status == "201 Created"
    assert probe.names() == [COMPLETE.decode()]


def test_reads_never_go_past_the_content_length(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    # The connection holds more than this request's body (a pipelined next request).
    entries = {**complete(), "wsgi.input": io.BytesIO(COMPLETE + b"GET / HTTP/1.1\r\n")}
    seen = post(SessionMiddleware(pledging(models, read_all), session), entries, fake_server)
    assert seen.status == "201 Created"
    assert probe.names() == [COMPLETE.decode()]


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param({}, id="no-Content-Length"),
        pytest.param({"CONTENT_LENGTH": "0"}, id="Content-Length-0"),
        pytest.param({"CONTENT_LENGTH": ""}, id="empty-Content-Length"),
        pytest.param({"CONTENT_LENGTH": "eleven"}, id="malformed-Content-Length"),
        pytest.param({"CONTENT_LENGTH": "11", "HTTP_TRANSFER_ENCODING": "chunked"}, id="chunked"),
    ],
)
def test_a_request_without_a_counted_body_gets_the_servers_own_input(
    session: Any, entries: dict[str, Any]
) -> None:
    server_input = io.BytesIO(b"")
    given: list[Any] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        given.append(environ["wsgi.input"])
        start_response("200 OK", [])
        return []

    environ: dict[str, Any] = {"wsgi.input": server_input, "CONTENT_LENGTH": None, **entries}
    seen = serve(SessionMiddleware(app, session), environ=environ)
    assert seen.status == "200 OK"
    assert given == [server_input]


def test_a_request_with_a_body_gets_the_counter_around_the_servers_input(
    session: Any,
) -> None:
    given: list[Any] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        given.append(environ["wsgi.input"])
        start_response("200 OK", [])
        return []

    entries = complete()
    serve(SessionMiddleware(app, session), method="POST", environ=entries)
    [counted] = given
    assert isinstance(counted, CountedInput)
    assert counted.stream is entries["wsgi.input"]


# -- a body cut short while the response streams ----------------------------------------------


def test_work_done_while_streaming_after_a_short_read_is_rolled_back(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="before").save()
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            yield b"head;"
            models.User(name=read_all(environ["wsgi.input"]).decode()).save()
            yield b"tail;"

        return body()

    seen = post(SessionMiddleware(app, session), short(), fake_server)
    assert seen.status == "200 OK"  # already out when the body was found short
    assert probe.names() == ["before"]
