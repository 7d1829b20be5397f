"""Contract points 2 and 3: when the decision is taken, and what it is.

Every test runs on SQLite, PostgreSQL and MariaDB. The ``fake_server``
fixture records the committed user names at the moment the status reaches
the server, which is how "decided before any byte is handed over" is checked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest
from support import STYLES, FakeServer, Models, Probe, Style, answering, saving, serve

from wsgi_sqla import SessionMiddleware, force_commit, force_rollback


@pytest.mark.parametrize("status", ["200 OK", "201 Created", "204 No Content", "302 Found"])
def test_status_below_400_commits(session: Any, models: Models, probe: Probe, status: str) -> None:
    assert serve(SessionMiddleware(saving(models, status), session)).status == status
    assert probe.names() == ["ann"]


@pytest.mark.parametrize("status", ["400 Bad Request", "404 Not Found", "409 Conflict", "500 Oops"])
def test_status_400_and_above_rolls_back(
    session: Any, models: Models, probe: Probe, status: str
) -> None:
    assert serve(SessionMiddleware(saving(models, status), session)).status == status
    assert probe.names() == []


@pytest.mark.parametrize(
    "override",
    [pytest.param(lambda: None, id="plain"), pytest.param(force_commit, id="after-force_commit")],
)
def test_application_exception_rolls_back_and_propagates(
    session: Any, models: Models, probe: Probe, override: Callable[[], None]
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        override()
        raise LookupError("the view failed")

    with pytest.raises(LookupError, match="the view failed"):
        webtest.TestApp(SessionMiddleware(app, session)).get("/")
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_exception_after_start_response_rolls_back(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        raise LookupError("failed after choosing 200")

    seen = fake_server(SessionMiddleware(app, session))
    assert isinstance(seen.error, LookupError)
    assert seen.status == "500 Internal Server Error", "the 200 must never reach the server"
    assert probe.names() == []


def first_byte(style: Style) -> str:
    """The event that hands the first byte of a body in ``style`` to the server."""
    return "write" if style == "write" else "chunk"


@pytest.mark.parametrize("style", STYLES)
def test_commit_is_visible_before_the_status_reaches_the_server(
    session: Any, models: Models, fake_server: FakeServer, style: Style
) -> None:
    seen = fake_server(SessionMiddleware(saving(models, "200 OK", style=style), session))
    assert seen.events == [
        ("start_response", ("200 OK", ["ann"])),
        (first_byte(style), b"done"),
        ("close", None),
    ]


@pytest.mark.parametrize("style", STYLES)
def test_error_status_is_rolled_back_before_it_reaches_the_server(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer, style: Style
) -> None:
    status = "422 Unprocessable Entity"
    seen = fake_server(SessionMiddleware(saving(models, status, style=style), session))
    assert seen.events[:2] == [("start_response", (status, [])), (first_byte(style), b"done")]
    assert probe.names() == []


def test_lazy_generator_app_with_empty_body_is_decided(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        models.User(name="ann").save()
        start_response("204 No Content", [])
        yield from ()

    seen = fake_server(SessionMiddleware(app, session))
    assert seen.status == "204 No Content"
    assert probe.names() == ["ann"]


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
        saving(models, "401 Unauthorized"), session, commit_veto=lambda e, s, h: False
    )
    webtest.TestApp(middleware).get("/", status=401)
    assert probe.names() == ["ann"]


def test_veto_that_raises_rolls_back_and_propagates(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def veto(environ: Any, status: str, headers: Any) -> bool:
        raise ValueError("broken veto")

    seen = fake_server(SessionMiddleware(saving(models, "200 OK"), session, commit_veto=veto))
    assert isinstance(seen.error, ValueError)
    assert seen.status == "500 Internal Server Error"
    assert probe.names() == []


@pytest.mark.parametrize(
    ("override", "status", "kept"),
    [
        pytest.param(force_commit, "401 Unauthorized", ["ann"], id="force_commit-keeps-a-401"),
        pytest.param(force_rollback, "200 OK", [], id="force_rollback-makes-a-200-a-dry-run"),
    ],
)
def test_override_wins_over_the_status(
    session: Any,
    models: Models,
    probe: Probe,
    override: Callable[[], None],
    status: str,
    kept: list[str],
) -> None:
    def work() -> None:
        models.User(name="ann").save()  # e.g. a failed-login counter behind a 401
        override()

    webtest.TestApp(SessionMiddleware(answering(status, work), session)).get("/", status="*")
    assert probe.names() == kept


def test_force_rollback_also_rolls_back_work_done_while_streaming(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        models.User(name="late").save()
        force_rollback()
        yield b"b"

    fake_server(SessionMiddleware(app, session))
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
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        start_response("200 OK", [])
        try:
            raise KeyError("late failure")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"failed"]

    seen = fake_server(SessionMiddleware(app, session))
    assert seen.events[0] == ("start_response", ("500 Internal Server Error", []))
    assert probe.names() == []


def test_exc_info_after_the_decision_reraises_into_the_application(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
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

    seen = fake_server(SessionMiddleware(app, session))
    assert [str(exc) for exc in reraised] == ["'failure mid-stream'"]
    assert isinstance(seen.error, KeyError)
    assert seen.status == "200 OK"
    assert probe.names() == ["ann"], "committed before the stream, tail rolled back"


def starts_twice(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    start_response("201 Created", [])
    return [b""]


def never_starts(environ: Any, start_response: Any) -> list[bytes]:
    return [b"forgot start_response"]


def returns_no_iterable(environ: Any, start_response: Any) -> Any:
    start_response("200 OK", [])
    return 42


@pytest.mark.parametrize(
    ("broken", "error", "message"),
    [
        pytest.param(
            starts_twice,
            RuntimeError,
            "called a second time without exc_info",
            id="second-start_response-without-exc_info",
        ),
        pytest.param(
            never_starts,
            RuntimeError,
            "without calling start_response()",
            id="never-calls-start_response",
        ),
        pytest.param(
            returns_no_iterable,
            TypeError,
            "returned 'int', which is not iterable",
            id="returns-a-non-iterable",
        ),
    ],
)
def test_application_breaking_pep_3333_gets_a_clear_error_and_nothing_commits(
    session: Any,
    models: Models,
    probe: Probe,
    fake_server: FakeServer,
    broken: Any,
    error: type[Exception],
    message: str,
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        models.User(name="ann").save()
        return broken(environ, start_response)

    seen = fake_server(SessionMiddleware(app, session))
    assert isinstance(seen.error, error)
    assert message in str(seen.error)
    assert seen.status == "500 Internal Server Error"
    assert probe.names() == []
    assert probe.checked_out() == 0
