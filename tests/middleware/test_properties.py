"""Property-based: for any application behaviour, the database matches what the server saw.

Hypothesis generates WSGI applications from the ways real ones behave:
status codes from 200 to 500; returning a list, a generator that calls
``start_response`` lazily, or using the ``write()`` callable; raising before
``start_response``, after it, while streaming, or re-raising through a late
``exc_info``; replacing the status early with ``exc_info`` (an error
handler); writing before the decision and while streaming; overriding the
decision; a write whose COMMIT fails; transient errors on the first
attempts with retries on; and a client that hangs up part-way through the
body. The tests' one in-process server (:func:`support.serve`) drives each
one as gunicorn would, and the invariants
are checked against what that server saw, not against how the middleware
works inside:

* no status reached the server: nothing was committed;
* a status reached the server: the work done before it is committed exactly
  when that status (or the override) says commit, and it was already
  committed when the status arrived; a commit that fails never lets a
  status through;
* work done while streaming is committed exactly when the response
  committed and the server read the body to its end without an error;
* the work of attempts that failed transiently is never committed;
* the body is closed exactly once, no connection stays checked out and no
  session stays in the registry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from support import Boom, Models, Probe, serve

import wsgi_sqla._retry
from wsgi_sqla import Retry, SessionMiddleware, force_commit, force_rollback
from wsgi_sqla._errors import ERROR_HEADERS

RETRIES = 2


@dataclass(frozen=True)
class Behaviour:
    status: int
    style: str  # "list" | "lazy" | "write"
    write_before: bool
    dangling: bool  # a row whose deferred foreign key fails at COMMIT
    replace_status: bool  # start_response("200 OK"), then again with exc_info and the status
    raise_at: str | None  # "before_start" | "after_start" | "in_body" | "late_exc_info"
    stream_write: bool
    chunks: int
    override: str | None  # "commit" | "rollback"
    hang_up_after: int | None
    transient_failures: int


behaviours = st.builds(
    Behaviour,
    status=st.sampled_from([200, 201, 204, 302, 400, 404, 409, 500, 503]),
    style=st.sampled_from(["list", "lazy", "write"]),
    write_before=st.booleans(),
    dangling=st.booleans(),
    replace_status=st.booleans(),
    raise_at=st.sampled_from(
        [None, None, None, "before_start", "after_start", "in_body", "late_exc_info"]
    ),
    stream_write=st.booleans(),
    chunks=st.integers(1, 3),
    override=st.sampled_from([None, None, "commit", "rollback"]),
    hang_up_after=st.sampled_from([None, None, 1, 2]),
    transient_failures=st.integers(0, RETRIES + 1),
)


@dataclass
class Seen:
    """What the application did (what the server saw is :class:`support.Exchange`)."""

    closes: int = 0
    attempts: int = 0
    returned: bool = False  # the application returned its body
    wrote_before: bool = False
    wrote_stream: bool = False


class Body:
    """The application's iterable: counts close(), optionally calls start_response lazily."""

    def __init__(self, behaviour: Behaviour, seen: Seen, models: Models, begin: Any) -> None:
        self.b, self.seen, self.models, self.begin = behaviour, seen, models, begin

    def __iter__(self) -> Iterator[bytes]:
        b = self.b
        if b.style == "lazy":
            self.begin()
            if b.raise_at == "after_start":
                raise Boom("after start_response")
        if b.style == "write":
            return  # everything was written through write()
        yield b"chunk 1"
        after_first_chunk(b, self.seen, self.models, self.begin)
        for number in range(2, b.chunks + 1):
            yield f"chunk {number}".encode()

    def close(self) -> None:
        self.seen.closes += 1


def after_first_chunk(b: Behaviour, seen: Seen, models: Models, begin: Any) -> None:
    """What happens once the decision was taken and part of the body went out."""
    if b.stream_write:
        models.User(name="stream").save()
        seen.wrote_stream = True
    if b.raise_at == "in_body":
        raise Boom("while streaming")
    if b.raise_at == "late_exc_info":
        begin(late=True)


def application(b: Behaviour, seen: Seen, models: Models) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.attempts += 1
        if seen.attempts <= b.transient_failures:
            models.User(name=f"attempt {seen.attempts}").save()
            raise OperationalError(
                "UPDATE ...", {}, psycopg.errors.SerializationFailure("could not serialize")
            )
        if b.write_before:
            models.User(name="before").save()
            seen.wrote_before = True
        if b.dangling:
            models.Pledge(user_id=987654).save()
        if b.override == "commit":
            force_commit()
        elif b.override == "rollback":
            force_rollback()
        if b.raise_at == "before_start":
            raise Boom("before start_response")

        def begin(late: bool = False) -> Any:
            status = f"{b.status} Whatever"
            if late:
                try:
                    raise Boom("error page after the body began")
                except Boom:
                    return start_response("500 Internal Server Error", [], sys.exc_info())
            if b.replace_status:
                start_response("200 OK", [])
                try:
                    raise Boom("replaced by an error handler")
                except Boom:
                    return start_response(status, [], sys.exc_info())
            return start_response(status, [])

        if b.style != "lazy":
            write = begin()
            if b.raise_at == "after_start":
                raise Boom("after start_response")
            if b.style == "write":
                write(b"written")
                after_first_chunk(b, seen, models, begin)
        seen.returned = True
        return Body(b, seen, models, begin)

    return app


def commits(status: str, override: str | None) -> bool:
    """The rule, from the contract: the override wins, else commit below 400."""
    if override is not None:
        return override == "commit"
    return int(status.split()[0]) < 400


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi_sqla._retry, "sleep", lambda seconds: None)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(b=behaviours)
def test_database_matches_what_the_server_saw(
    b: Behaviour, session: Any, models: Models, probe: Probe, engine: Engine
) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM wsgi_sqla_pledges"))
        connection.execute(text("DELETE FROM wsgi_sqla_users"))
    seen = Seen()
    middleware = SessionMiddleware(application(b, seen, models), session, retry=Retry(RETRIES))
    exchange = serve(middleware, on_start_response=probe.names, disconnect_after=b.hang_up_after)
    committed = probe.names()

    # Transiently failed attempts: retried while retries were left, never kept.
    assert seen.attempts == min(b.transient_failures, RETRIES) + 1
    assert not [name for name in committed if name.startswith("attempt")]

    if exchange.status is None or exchange.headers == ERROR_HEADERS:
        # Nothing of the application's reached the server (at most the middleware's own 500).
        assert committed == [], f"nothing reached the server, yet {committed} was committed"
    else:
        decision = commits(exchange.status, b.override)
        assert not (b.dangling and decision and engine.dialect.name != "mariadb"), (
            "a COMMIT that must fail let its status through"
        )
        assert ("before" in committed) == (seen.wrote_before and decision)
        assert ("before" in exchange.at_status) == ("before" in committed), (
            "the decision was not taken before the status reached the server"
        )
        finished = exchange.finished and exchange.error is None
        assert ("stream" in committed) == (seen.wrote_stream and decision and finished)

    assert seen.closes == (1 if seen.returned else 0)
    assert probe.checked_out() == 0
    assert not session.registry.has()
