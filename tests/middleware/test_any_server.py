"""What every server gets: a 500 it can send, errors that still reach outer middleware,
and its own file wrapper back.

A request whose application raised, or whose commit failed, is answered
``500 Internal Server Error`` by the middleware (uWSGI would otherwise drop
the connection without a status), with a body that reveals nothing; the
exception is logged and raised again from the response's ``close()``, where
error-reporting middleware wrapped around ours (Sentry's catches exceptions
from the call, from iterating and from ``close()``) and the server see it.
``errors="propagate"`` keeps the exception in the call instead.

A response that is the server's own ``wsgi.file_wrapper`` object is handed
back untouched, with the unit already ended.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from support import FakeServer, Models, Probe

from wsgi_sqla import SessionMiddleware, after_commit


class Recorder:
    """An outer middleware that records exceptions where Sentry's WSGI middleware catches them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.caught: list[tuple[str, BaseException]] = []

    def __call__(self, environ: Any, start_response: Any) -> Any:
        try:
            body = self.app(environ, start_response)
        except BaseException as exc:
            self.caught.append(("call", exc))
            raise
        return RecordedBody(self, body)


class RecordedBody:
    def __init__(self, recorder: Recorder, body: Any) -> None:
        self.recorder, self.body = recorder, body

    def __iter__(self) -> Any:
        iterator = iter(self.body)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except BaseException as exc:
                self.recorder.caught.append(("iterate", exc))
                raise
            yield chunk

    def close(self) -> None:
        try:
            getattr(self.body, "close", lambda: None)()
        except BaseException as exc:
            self.recorder.caught.append(("close", exc))
            raise


def raising(models: Models) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        raise LookupError("secret detail of the failure")

    return app


def test_raising_application_gets_a_500_that_reveals_nothing(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    seen = fake_server(SessionMiddleware(raising(models), session))
    assert seen.status == "500 Internal Server Error"
    assert seen.body == b"Internal Server Error\n"
    assert isinstance(seen.error, LookupError), "close() must raise the request's exception"
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_outer_middleware_sees_the_applications_exception_at_close(
    session: Any, models: Models, fake_server: FakeServer
) -> None:
    outer = Recorder(SessionMiddleware(raising(models), session))
    seen = fake_server(outer)
    assert seen.status == "500 Internal Server Error"
    assert [(where, type(exc)) for where, exc in outer.caught] == [("close", LookupError)]
    assert outer.caught[0][1] is seen.error


def test_outer_middleware_sees_a_failed_commit_at_close(
    session: Any, models: Models, engine: Any, probe: Probe, fake_server: FakeServer
) -> None:
    if engine.dialect.name in ("mysql", "mariadb"):
        pytest.skip("MariaDB has no deferrable constraints: nothing passes flush and fails COMMIT")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        models.Pledge(user_id=987654).save()
        start_response("201 Created", [])
        return [b"created"]

    outer = Recorder(SessionMiddleware(app, session))
    seen = fake_server(outer)
    assert seen.status == "500 Internal Server Error"
    assert [(where, type(exc)) for where, exc in outer.caught] == [("close", IntegrityError)]
    assert probe.names() == []


def test_the_exception_is_logged_with_its_traceback(
    session: Any, models: Models, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wsgi_sqla"):
        fake_server(SessionMiddleware(raising(models), session))
    [record] = [r for r in caplog.records if r.name == "wsgi_sqla"]
    assert "answered 500" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is LookupError


def test_errors_propagate_leaves_the_exception_in_the_call(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    outer = Recorder(SessionMiddleware(raising(models), session, errors="propagate"))
    seen = fake_server(outer)
    assert seen.status is None
    assert [(where, type(exc)) for where, exc in outer.caught] == [("call", LookupError)]
    assert probe.names() == []


def test_an_error_after_the_response_began_still_propagates(
    session: Any, models: Models, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        raise LookupError("too late for a 500")

    seen = fake_server(SessionMiddleware(app, session))
    assert seen.status == "200 OK"
    assert isinstance(seen.error, LookupError)


def test_errors_must_be_respond_or_propagate(session: Any) -> None:
    with pytest.raises(ValueError, match=r"SessionMiddleware: errors must be 'respond' or"):
        SessionMiddleware(lambda e, s: [], session, errors="ignore")


# -- the server's file wrapper ------------------------------------------------------


class FileWrapper:
    """A server's ``wsgi.file_wrapper`` class (as gunicorn's and waitress's are)."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike, self.block_size = filelike, block_size
        self.iterated = False

    def __iter__(self) -> Any:
        self.iterated = True
        return iter(lambda: self.filelike.read(self.block_size), b"")

    def close(self) -> None:
        self.filelike.close()


def returns_the_file(filelike: Any, block_size: int = 8192) -> Any:
    """uWSGI's ``wsgi.file_wrapper``: it returns the file object itself."""
    return filelike


def serve_with(wrapper: Any, app: Any) -> tuple[Any, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/file",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.file_wrapper": wrapper,
    }
    body = app(environ, lambda status, headers, exc_info=None: calls.append(("start", status)))
    assert environ["wsgi.file_wrapper"] is wrapper, "the server's environ must be left as it was"
    return body, calls


@pytest.fixture
def download(tmp_path: Path) -> Path:
    path = tmp_path / "download.bin"
    path.write_bytes(b"0123456789" * 1000)
    return path


@pytest.mark.parametrize(
    "wrapper",
    [pytest.param(FileWrapper, id="wrapper-class"), pytest.param(returns_the_file, id="uwsgi")],
)
def test_the_servers_file_wrapper_is_handed_back_untouched_after_the_unit_ended(
    session: Any, models: Models, probe: Probe, download: Path, wrapper: Any
) -> None:
    made: list[Any] = []
    hooks: list[list[str]] = []

    def app(environ: Any, start_response: Any) -> Any:
        models.User(name="ann").save()
        after_commit(lambda: hooks.append(probe.names()))
        start_response("200 OK", [])
        made.append(environ["wsgi.file_wrapper"](open(download, "rb"), 4096))  # noqa: SIM115
        return made[0]

    body, calls = serve_with(wrapper, SessionMiddleware(app, session))
    assert body is made[0]
    assert not getattr(body, "iterated", False)
    assert calls == [("start", "200 OK")]
    assert probe.names() == ["ann"] and hooks == [["ann"]], "hooks run before the file is sent"
    assert not session.registry.has()
    assert probe.checked_out() == 0
    body.close()


def test_a_file_wrapper_answer_that_is_vetoed_rolls_back_and_is_still_handed_back(
    session: Any, models: Models, probe: Probe, download: Path
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        models.User(name="ann").save()
        start_response("404 Not Found", [])
        return environ["wsgi.file_wrapper"](open(download, "rb"))

    body, _ = serve_with(FileWrapper, SessionMiddleware(app, session))
    assert isinstance(body, FileWrapper)
    assert probe.names() == []
    body.close()


def test_a_file_wrapper_wrapped_again_by_the_application_goes_through_the_middleware(
    session: Any, models: Models, probe: Probe, download: Path
) -> None:
    made: list[FileWrapper] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        made.append(environ["wsgi.file_wrapper"](open(download, "rb")))  # noqa: SIM115
        return iter(made[0])

    body, _ = serve_with(FileWrapper, SessionMiddleware(app, session))
    assert not isinstance(body, FileWrapper)
    assert b"".join(body) == download.read_bytes()
    body.close()
    made[0].close()
