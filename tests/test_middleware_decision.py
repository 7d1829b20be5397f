"""Contract points 2 and 3: when the decision is taken, and what it is.

Every test runs on SQLite, PostgreSQL and MariaDB. The :class:`Server`
fixture records the committed user names at the moment the status reaches
the server, which is how "decided before any byte is handed over" is checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from conftest import Models, Probe, Server

from wsgi_sqla import SessionMiddleware, force_commit, force_rollback


def writer(models: Models, status: str, name: str = "ann") -> Any:
    """An application that saves a user, then answers ``status``."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name=name).save()
        start_response(status, [("Content-Type", "text/plain")])
        return [b"done"]

    return app


@pytest.mark.parametrize("status", ["200 OK", "201 Created", "204 No Content", "302 Found"])
def test_status_below_400_commits(session: Any, models: Models, probe: Probe, status: str) -> None:
    webtest.TestApp(SessionMiddleware(writer(models, status), session)).get("/", status="*")
    assert probe.names() == ["ann"]


@pytest.mark.parametrize("status", ["400 Bad Request", "404 Not Found", "409 Conflict", "500 Oops"])
def test_status_400_and_above_rolls_back(
    session: Any, models: Models, probe: Probe, status: str
) -> None:
    webtest.TestApp(SessionMiddleware(writer(models, status), session)).get("/", status="*")
    assert probe.names() == []


def test_application_exception_rolls_back_and_propagates(
    session: Any, models: Models, probe: Probe
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        raise LookupError("the view failed")

    with pytest.raises(LookupError, match="the view failed"):
        webtest.TestApp(SessionMiddleware(app, session)).get("/")
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_exception_after_start_response_rolls_back(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        raise LookupError("failed after choosing 200")

    seen = server.request(SessionMiddleware(app, session))
    assert isinstance(seen.error, LookupError)
    assert seen.status == "500 Internal Server Error", "the 200 must never reach the server"
    assert probe.names() == []


def test_commit_is_visible_before_status_reaches_server(
    session: Any, models: Models, server: Server
) -> None:
    seen = server.request(SessionMiddleware(writer(models, "200 OK"), session))
    assert seen.events[0] == ("start_response", ("200 OK", ["ann"]))


def test_generator_app_calling_start_response_lazily_is_decided_before_its_first_chunk(
    session: Any, models: Models, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        yield b"first"
        yield b"second"

    seen = server.request(SessionMiddleware(app, session))
    assert [kind for kind, _ in seen.events] == ["start_response", "chunk", "chunk", "close"]
    assert seen.events[0] == ("start_response", ("200 OK", ["ann"]))
    assert seen.body == b"firstsecond"


def test_lazy_generator_app_with_error_status_rolls_back(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response("422 Unprocessable Entity", [])
        yield b"no"

    seen = server.request(SessionMiddleware(app, session))
    assert seen.events[0] == ("start_response", ("422 Unprocessable Entity", []))
    assert probe.names() == []


def test_lazy_generator_app_with_empty_body_is_decided(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response("204 No Content", [])
        yield from ()

    seen = server.request(SessionMiddleware(app, session))
    assert seen.status == "204 No Content"
    assert probe.names() == ["ann"]


def test_write_app_is_decided_before_its_first_write_passes_through(
    session: Any, models: Models, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        write = start_response("200 OK", [])
        write(b"written")
        return []

    seen = server.request(SessionMiddleware(app, session))
    assert seen.events[:2] == [("start_response", ("200 OK", ["ann"])), ("write", b"written")]


def test_write_app_with_error_status_rolls_back_before_writing(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        write = start_response("400 Bad Request", [])
        write(b"no")
        return []

    seen = server.request(SessionMiddleware(app, session))
    assert seen.events[0] == ("start_response", ("400 Bad Request", []))
    assert probe.names() == []


def test_veto_gets_environ_status_and_headers_and_can_roll_back_a_200(
    session: Any, models: Models, probe: Probe
) -> None:
    calls: list[tuple[str, str, list[tuple[str, str]]]] = []

    def veto(environ: Any, status: str, headers: list[tuple[str, str]]) -> bool:
        calls.append((environ["PATH_INFO"], status, headers))
        return ("X-Dry-Run", "yes") in headers

    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name=environ["PATH_INFO"].strip("/")).save()
        dry = [("X-Dry-Run", "yes")] if environ["PATH_INFO"] == "/dry" else []
        start_response("200 OK", [("Content-Type", "text/plain"), *dry])
        return [b""]

    client = webtest.TestApp(SessionMiddleware(app, session, commit_veto=veto))
    client.get("/dry")
    client.get("/real")
    assert probe.names() == ["real"]
    assert calls == [
        ("/dry", "200 OK", [("Content-Type", "text/plain"), ("X-Dry-Run", "yes")]),
        ("/real", "200 OK", [("Content-Type", "text/plain")]),
    ]


def test_veto_can_commit_a_4xx(session: Any, models: Models, probe: Probe) -> None:
    middleware = SessionMiddleware(
        writer(models, "401 Unauthorized"), session, commit_veto=lambda e, s, h: False
    )
    webtest.TestApp(middleware).get("/", status=401)
    assert probe.names() == ["ann"]


def test_veto_that_raises_rolls_back_and_propagates(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def veto(environ: Any, status: str, headers: Any) -> bool:
        raise ValueError("broken veto")

    seen = server.request(SessionMiddleware(writer(models, "200 OK"), session, commit_veto=veto))
    assert isinstance(seen.error, ValueError)
    assert seen.status == "500 Internal Server Error"
    assert probe.names() == []


def test_force_commit_keeps_a_failed_login_counter_behind_a_401(
    session: Any, models: Models, probe: Probe
) -> None:
    def login(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="failed-login-1").save()
        force_commit()
        start_response("401 Unauthorized", [])
        return [b"wrong password"]

    webtest.TestApp(SessionMiddleware(login, session)).get("/", status=401)
    assert probe.names() == ["failed-login-1"]


def test_force_rollback_makes_a_200_a_dry_run(session: Any, models: Models, probe: Probe) -> None:
    def dry_run(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        force_rollback()
        start_response("200 OK", [])
        return [b"would have created ann"]

    webtest.TestApp(SessionMiddleware(dry_run, session)).get("/", status=200)
    assert probe.names() == []


def test_force_commit_does_not_commit_when_the_application_raises(
    session: Any, models: Models, probe: Probe
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        force_commit()
        raise LookupError("failed after force_commit")

    with pytest.raises(LookupError):
        webtest.TestApp(SessionMiddleware(app, session)).get("/")
    assert probe.names() == []


def test_force_rollback_also_rolls_back_work_done_while_streaming(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        models.User(name="late").save()
        force_rollback()
        yield b"b"

    server.request(SessionMiddleware(app, session))
    assert probe.names() == []


def test_overrides_outside_a_unit_of_work_raise_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"force_commit\(\): needs a running unit of work"):
        force_commit()
    with pytest.raises(RuntimeError, match=r"force_rollback\(\): needs a running unit of work"):
        force_rollback()


def test_override_applies_to_one_request_only(session: Any, models: Models, probe: Probe) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        name = environ["PATH_INFO"].strip("/")
        models.User(name=name).save()
        if name == "dry":
            force_rollback()
        start_response("200 OK", [])
        return [b""]

    client = webtest.TestApp(SessionMiddleware(app, session))
    client.get("/dry")
    client.get("/kept")
    assert probe.names() == ["kept"]


def test_exc_info_before_the_decision_replaces_the_status(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        try:
            raise KeyError("late failure")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"failed"]

    seen = server.request(SessionMiddleware(app, session))
    assert seen.events[0] == ("start_response", ("500 Internal Server Error", []))
    assert probe.names() == []


def test_exc_info_after_the_decision_reraises_into_the_application(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    reraised: list[BaseException] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        yield b"part"
        models.User(name="tail").save()
        try:
            raise KeyError("failure mid-stream")
        except KeyError:
            try:
                start_response("500 Internal Server Error", [], sys.exc_info())
            except KeyError as exc:
                reraised.append(exc)
                raise

    seen = server.request(SessionMiddleware(app, session))
    assert [str(exc) for exc in reraised] == ["'failure mid-stream'"]
    assert isinstance(seen.error, KeyError)
    assert seen.status == "200 OK"
    assert probe.names() == ["ann"], "committed before the stream, tail rolled back"


def test_second_start_response_without_exc_info_is_an_error(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b""]

    seen = server.request(SessionMiddleware(app, session))
    assert isinstance(seen.error, RuntimeError)
    assert "called a second time without exc_info" in str(seen.error)
    assert probe.names() == []


def test_application_that_never_calls_start_response_gets_a_clear_error(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        return [b"forgot start_response"]

    seen = server.request(SessionMiddleware(app, session))
    assert isinstance(seen.error, RuntimeError)
    assert "without calling start_response()" in str(seen.error)
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_application_returning_a_non_iterable_gets_a_clear_error(
    session: Any, models: Models, probe: Probe, server: Server
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        models.User(name="ann").save()
        start_response("200 OK", [])
        return 42

    seen = server.request(SessionMiddleware(app, session))
    assert isinstance(seen.error, TypeError)
    assert "returned 'int', which is not iterable" in str(seen.error)
    assert seen.status == "500 Internal Server Error"
    assert probe.names() == []
