"""Transient-error retry: which errors count, and how a request is run again.

The errors that :func:`is_transient_error` must recognise are produced here
by real PostgreSQL and MariaDB servers (a concurrent update under
SERIALIZABLE, a deadlock, a lock wait that times out, ``NOWAIT``). The
mechanics of running a request again (body replay, fresh environ, limits,
backoff, the framework hooks) are driven in process on every database, with
applications that raise a transient error on their first attempts; the
real concurrent conflicts through gunicorn are in tests/server/.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bottle
import flask
import psycopg.errors
import pymysql.err
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool
from support import Exchange, Models, Probe, make_engine, serve

import wsgi_sqla._retry
from wsgi_sqla import (
    Retry,
    SessionMiddleware,
    after_commit,
    is_transient_error,
    report_bottle_exceptions,
    report_exception,
    report_flask_exceptions,
)

SERVERS = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)
POSTGRESQL = pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)
MARIADB = pytest.mark.parametrize("db_name", ["mariadb"], indirect=True)


# -- which errors are transient: real errors from real servers ---------------


def insert_users(engine: Engine, *names: str) -> None:
    with engine.begin() as connection:
        for name in names:
            connection.execute(text("INSERT INTO wsgi_sqla_users (name) VALUES (:n)"), {"n": name})


@pytest.fixture
def unpooled(engine: Engine) -> Iterator[Engine]:
    """An engine whose connections are closed after use: session settings stay in the test."""
    fresh = make_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)
    yield fresh
    fresh.dispose()


def deadlock(engine: Engine, setup: str | None = None) -> DBAPIError:
    """Two transactions that each hold the row the other one wants; returns the loser's error."""
    insert_users(engine, "one", "two")
    lock = "SELECT id FROM wsgi_sqla_users WHERE name = :n FOR UPDATE"
    errors: list[DBAPIError] = []

    def wait_for_two(connection: Any) -> None:
        try:
            connection.execute(text(lock), {"n": "two"})
        except DBAPIError as exc:
            errors.append(exc)
        finally:
            connection.rollback()

    with engine.connect() as a, engine.connect() as b:
        for connection in (a, b):
            if setup:
                connection.execute(text(setup))
        a.execute(text(lock), {"n": "one"})
        b.execute(text(lock), {"n": "two"})
        # Whichever of the two requests comes first, the second closes the cycle.
        thread = threading.Thread(target=wait_for_two, args=(a,))
        thread.start()
        try:
            b.execute(text(lock), {"n": "one"})
        except DBAPIError as exc:
            errors.append(exc)
        b.rollback()
        thread.join()
    assert len(errors) == 1, errors
    return errors[0]


def lock_conflict(engine: Engine, wanting: str, setup: str | None = None) -> OperationalError:
    """One connection locks the users; the error the other gets running ``wanting``."""
    insert_users(engine, "ann")
    with engine.connect() as holder, engine.connect() as waiter:
        if setup:
            waiter.execute(text(setup))
        holder.execute(text("SELECT id FROM wsgi_sqla_users FOR UPDATE"))
        with pytest.raises(OperationalError) as caught:
            waiter.execute(text(wanting))
    return caught.value


@POSTGRESQL
def test_postgresql_serialization_failure_is_transient(engine: Engine, models: Models) -> None:
    insert_users(engine, "ann")
    with engine.connect() as a, engine.connect() as b:
        a = a.execution_options(isolation_level="SERIALIZABLE")
        a.execute(text("SELECT name FROM wsgi_sqla_users")).all()
        with b.begin():
            b.execute(text("UPDATE wsgi_sqla_users SET name = 'bob'"))
        with pytest.raises(OperationalError) as caught:
            a.execute(text("UPDATE wsgi_sqla_users SET name = 'cy'"))
    assert caught.value.orig.sqlstate == "40001"  # type: ignore[union-attr]
    assert is_transient_error(caught.value)


@POSTGRESQL
def test_postgresql_deadlock_is_transient(unpooled: Engine, models: Models) -> None:
    error = deadlock(unpooled, "SET deadlock_timeout = '100ms'")
    assert error.orig.sqlstate == "40P01"  # type: ignore[union-attr]
    assert is_transient_error(error)


@POSTGRESQL
def test_postgresql_lock_not_available_is_transient(engine: Engine, models: Models) -> None:
    error = lock_conflict(engine, "SELECT id FROM wsgi_sqla_users FOR UPDATE NOWAIT")
    assert error.orig.sqlstate == "55P03"  # type: ignore[union-attr]
    assert is_transient_error(error)


@MARIADB
def test_mariadb_deadlock_is_transient(engine: Engine, models: Models) -> None:
    error = deadlock(engine)
    assert error.orig.args[0] == 1213  # type: ignore[union-attr]
    assert is_transient_error(error)


@MARIADB
def test_mariadb_lock_wait_timeout_is_transient(unpooled: Engine, models: Models) -> None:
    error = lock_conflict(
        unpooled,
        "SELECT id FROM wsgi_sqla_users FOR UPDATE",
        setup="SET SESSION innodb_lock_wait_timeout = 1",
    )
    assert error.orig.args[0] == 1205  # type: ignore[union-attr]
    assert is_transient_error(error)


def test_integrity_error_is_not_transient(engine: Engine, models: Models) -> None:
    insert_users(engine, "ann")
    with pytest.raises(IntegrityError) as caught:
        insert_users(engine, "ann")
    assert not is_transient_error(caught.value)


def test_error_with_a_transient_cause_is_transient() -> None:
    class ViewFailed(Exception):
        pass

    try:
        try:
            raise serialization_failure()
        except OperationalError as exc:
            raise ViewFailed("could not book the seat") from exc
    except ViewFailed as exc:
        assert is_transient_error(exc)


def test_errors_that_are_not_database_errors_are_not_transient() -> None:
    assert not is_transient_error(RuntimeError("40001"))
    assert not is_transient_error(OSError(1213, "not a database error"))
    assert not is_transient_error(
        OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminated"))
    )


# -- running a request again ---------------------------------------------------


def serialization_failure() -> OperationalError:
    """The error psycopg raises for SQLSTATE 40001, wrapped as SQLAlchemy wraps it."""
    return OperationalError(
        "UPDATE ...", {}, psycopg.errors.SerializationFailure("could not serialize access")
    )


def mariadb_deadlock() -> OperationalError:
    """The error PyMySQL raises for ER_LOCK_DEADLOCK, wrapped as SQLAlchemy wraps it."""
    return OperationalError(
        "UPDATE ...", {}, pymysql.err.OperationalError(1213, "Deadlock found when trying to ...")
    )


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the middleware slept, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(wsgi_sqla._retry, "sleep", slept.append)
    return slept


def flaky(
    models: Models, failures: int, error: Callable[[], BaseException] = serialization_failure
) -> tuple[Any, list[dict[str, Any]]]:
    """An app that saves a user named after its body and fails its first ``failures`` attempts."""
    attempts: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        attempts.append({"body": body, "marked": "mark" in environ})
        environ["mark"] = True
        models.User(name=f"{body[:20].decode()}-{len(attempts)}").save()
        if len(attempts) <= failures:
            raise error()
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [body]

    return app, attempts


class Busy(Exception):
    """An application's own error that a custom ``retry_if`` calls transient."""


def busy_is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Busy)


CHUNKED = {
    "CONTENT_LENGTH": None,
    "HTTP_TRANSFER_ENCODING": "chunked",
    "wsgi.input_terminated": True,
}


@dataclass
class Flaky:
    """A request to an app that fails its first ``failures`` attempts with ``error``."""

    failures: int
    keywords: dict[str, Any]  # SessionMiddleware's
    error: Callable[[], BaseException] = serialization_failure
    request: dict[str, Any] = field(default_factory=lambda: {"body": b"ann"})  # serve()'s


Run = Callable[[Flaky], tuple[Exchange, list[dict[str, Any]]]]


@pytest.fixture
def run(session: Any, models: Models, delays: list[float]) -> Run:
    """Serve a :class:`Flaky` request; what the server saw, and the attempts the app made."""

    def serve_flaky(case: Flaky) -> tuple[Exchange, list[dict[str, Any]]]:
        app, attempts = flaky(models, case.failures, case.error)
        return serve(SessionMiddleware(app, session, **case.keywords), **case.request), attempts

    return serve_flaky


@pytest.mark.parametrize(
    ("case", "names"),
    [
        pytest.param(Flaky(2, {"retry": Retry(3)}), ["ann-3"], id="until-it-succeeds"),
        pytest.param(
            Flaky(1, {"retry": Retry(1)}, mariadb_deadlock), ["ann-2"], id="mariadb-deadlock"
        ),
        pytest.param(
            Flaky(1, {"retry": Retry(1, when=busy_is_transient)}, Busy),
            ["ann-2"],
            id="custom-retry_if-decides-what-is-transient",
        ),
        pytest.param(
            Flaky(1, {"retry": Retry(3, body_limit=10)}, request={"body": b"x" * 10}),
            ["xxxxxxxxxx-2"],
            id="body-at-the-limit",
        ),
        pytest.param(
            Flaky(1, {"retry": Retry(1)}, request={"method": "GET"}),
            ["-2"],
            id="request-without-a-body",
        ),
    ],
)
def test_transient_error_reruns_the_request_until_it_succeeds(
    run: Run, probe: Probe, case: Flaky, names: list[str]
) -> None:
    result, attempts = run(case)
    assert (result.status, result.error) == ("201 Created", None)
    assert result.start_responses == 1
    assert len(attempts) == case.failures + 1
    assert len({a["body"] for a in attempts}) == 1, "an attempt read another body"
    assert probe.names() == names, "a failed attempt's write was kept"
    assert probe.checked_out() == 0


@pytest.mark.parametrize(
    ("case", "raised", "runs"),
    [
        pytest.param(
            Flaky(10, {"retry": Retry(2)}),
            OperationalError,
            3,
            id="last-error-when-the-retries-are-used-up",
        ),
        pytest.param(
            Flaky(1, {"retry": Retry(3)}, lambda: RuntimeError("bug")),
            RuntimeError,
            1,
            id="error-that-is-not-transient",
        ),
        pytest.param(Flaky(1, {}), OperationalError, 1, id="retries-are-off-by-default"),
        pytest.param(
            Flaky(1, {"retry": Retry(3, body_limit=10)}, request={"body": b"x" * 11}),
            OperationalError,
            1,
            id="body-larger-than-the-limit",
        ),
        pytest.param(
            Flaky(1, {"retry": Retry(3)}, request={"body": b"ann", "environ": CHUNKED}),
            OperationalError,
            1,
            id="body-of-unknown-length",
        ),
    ],
)
def test_error_propagates_and_nothing_is_kept_when_the_request_is_not_run_again(
    run: Run, probe: Probe, case: Flaky, raised: type[BaseException], runs: int
) -> None:
    result, attempts = run(case)
    assert isinstance(result.error, raised)
    assert result.status == "500 Internal Server Error"
    assert len(attempts) == runs
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_each_attempt_reads_the_whole_request_body(
    session: Any, models: Models, delays: list[float]
) -> None:
    app, attempts = flaky(models, failures=2)
    serve(SessionMiddleware(app, session, retry=Retry(2)), body=b"x" * 70_000)
    assert [a["body"] for a in attempts] == [b"x" * 70_000] * 3


def test_each_attempt_gets_a_fresh_copy_of_the_environ(
    session: Any, models: Models, delays: list[float]
) -> None:
    app, attempts = flaky(models, failures=1)
    serve(SessionMiddleware(app, session, retry=Retry(1)), body=b"ann")
    assert [a["marked"] for a in attempts] == [False, False]


def test_without_retries_the_body_is_not_buffered(session: Any, models: Models) -> None:
    received: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        received.append(environ["wsgi.input"])
        start_response("200 OK", [])
        return [b""]

    stream = io.BytesIO(b"ann")
    serve(SessionMiddleware(app, session), environ={"wsgi.input": stream, "CONTENT_LENGTH": "3"})
    # The application reads the server's own stream, through the counter of
    # test_truncated_input.py, which reads nothing by itself.
    assert [wsgi_input.stream for wsgi_input in received] == [stream]
    assert stream.tell() == 0, "the middleware read the body"


def test_retry_if_that_raises_is_logged_and_the_original_error_propagates(
    session: Any, models: Models, delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise ValueError("broken predicate")

    app, attempts = flaky(models, failures=1)
    result = serve(SessionMiddleware(app, session, retry=Retry(3, when=broken)), body=b"ann")
    assert isinstance(result.error, OperationalError)
    assert len(attempts) == 1
    assert "retry_if" in caplog.text and "broken predicate" in caplog.text


def writes_then_fails(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [])(b"partial")
    raise serialization_failure()


def fails_while_streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [])
    yield b"partial"
    raise serialization_failure()


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(writes_then_fails, id="written-through-write"),
        pytest.param(fails_while_streaming, id="error-while-streaming"),
    ],
)
def test_no_retry_once_part_of_the_response_reached_the_server(
    session: Any, delays: list[float], app: Any
) -> None:
    attempts: list[int] = []

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        attempts.append(1)
        return app(environ, start_response)

    result = serve(SessionMiddleware(counted, session, retry=Retry(3)), body=b"ann")
    assert isinstance(result.error, OperationalError)
    assert (result.start_responses, result.body) == (1, b"partial")
    assert attempts == [1]


def test_error_reported_after_the_response_started_changes_nothing(
    session: Any, models: Models, probe: Probe, delays: list[float]
) -> None:
    attempts: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        attempts.append(1)
        models.User(name="before").save()
        write = start_response("200 OK", [])
        write(b"partial")
        models.User(name="after").save()
        report_exception(environ, serialization_failure())
        return [b""]

    result = serve(SessionMiddleware(app, session, retry=Retry(3)), body=b"ann")
    assert (result.status, result.error) == ("200 OK", None)
    assert attempts == [1]
    assert probe.names() == ["after", "before"]


def test_lazy_generator_app_failing_before_its_status_is_retried(
    session: Any, models: Models, probe: Probe, delays: list[float]
) -> None:
    attempts: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        attempts.append(1)
        models.User(name=f"ann-{len(attempts)}").save()
        if len(attempts) == 1:
            raise serialization_failure()
        start_response("200 OK", [])
        yield b"done"

    result = serve(SessionMiddleware(app, session, retry=Retry(1)))
    assert (result.status, result.body) == ("200 OK", b"done")
    assert probe.names() == ["ann-2"]


@POSTGRESQL
def test_serialization_failure_at_commit_is_retried(
    session: Any, engine: Engine, models: Models, probe: Probe, delays: list[float]
) -> None:
    """Write skew: both transactions read what the other writes; the second COMMIT fails."""
    attempts: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        attempts.append(1)
        session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        session.execute(text("SELECT count(*) FROM wsgi_sqla_users")).scalar_one()
        models.User(name=f"ann-{len(attempts)}").save()
        if len(attempts) == 1:
            with engine.connect() as other:
                other = other.execution_options(isolation_level="SERIALIZABLE")
                other.execute(text("SELECT count(*) FROM wsgi_sqla_users")).scalar_one()
                other.execute(text("INSERT INTO wsgi_sqla_users (name) VALUES ('bob')"))
                other.commit()
        start_response("201 Created", [])
        return [b"created"]

    failed: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        failed.append(exc)
        return is_transient_error(exc)

    result = serve(SessionMiddleware(app, session, retry=Retry(1, when=transient)))
    assert result.status == "201 Created"
    assert len(attempts) == 2
    assert len(failed) == 1
    assert failed[0].orig.sqlstate == "40001"  # type: ignore[attr-defined]
    assert probe.names() == ["ann-2", "bob"]


def test_backoff_doubles_and_is_jittered(session: Any, models: Models, delays: list[float]) -> None:
    app, _attempts = flaky(models, failures=4)
    serve(SessionMiddleware(app, session, retry=Retry(4, backoff=0.1)), body=b"ann")
    assert len(delays) == 4
    for number, delay in enumerate(delays):
        base = 0.1 * 2**number
        assert 0.5 * base <= delay <= 1.5 * base, (number, delay)
    ratios = {round(delay / (0.1 * 2**number), 9) for number, delay in enumerate(delays)}
    assert len(ratios) > 1, "no jitter"


def test_backoff_is_capped_at_one_second(session: Any, models: Models) -> None:
    policy = SessionMiddleware(lambda e, s: [], session, retry=Retry(1, backoff=5)).retry
    assert policy is not None
    assert all(policy.delay(8) <= 1.5 for _ in range(100))


def test_after_commit_hooks_of_failed_attempts_never_run(
    session: Any, models: Models, delays: list[float]
) -> None:
    ran: list[int] = []
    attempts: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        attempts.append(1)
        after_commit(ran.append, len(attempts))
        models.User(name="ann").save()
        if len(attempts) < 3:
            raise serialization_failure()
        start_response("200 OK", [])
        return [b""]

    serve(SessionMiddleware(app, session, retry=Retry(3)), body=b"ann")
    assert ran == [3]


def test_each_retry_is_logged_as_a_warning(
    session: Any, models: Models, delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    app, _attempts = flaky(models, failures=2)
    with caplog.at_level(logging.WARNING, logger="wsgi_sqla"):
        serve(SessionMiddleware(app, session, retry=Retry(3)), body=b"ann")
    retries = [r for r in caplog.records if "transient" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING] * 2
    assert "attempt 1 of 4" in retries[0].getMessage()
    assert "OperationalError" in retries[0].getMessage()


@pytest.mark.parametrize(
    ("keyword", "value", "error", "named"),
    [
        pytest.param("retries", -1, ValueError, "retries must be >= 0", id="retries-negative"),
        pytest.param("retries", 1.5, TypeError, "retries must be an int", id="retries-float"),
        pytest.param("retries", True, TypeError, "retries must be an int", id="retries-bool"),
        pytest.param("when", "40001", TypeError, "when must be a callable", id="when"),
        pytest.param("body_limit", -1, ValueError, "body_limit must be >= 0", id="limit-negative"),
        pytest.param("body_limit", None, TypeError, "body_limit must be an int", id="limit-none"),
        pytest.param("backoff", -0.1, ValueError, "backoff must be a finite", id="backoff-neg"),
        pytest.param(
            "backoff", float("nan"), ValueError, "backoff must be a fin", id="backoff-nan"
        ),
        pytest.param("backoff", "1s", TypeError, "backoff must be a number", id="backoff-str"),
    ],
)
def test_bad_retry_argument_is_refused_naming_it(
    keyword: str, value: Any, error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=f"^Retry: {named}"):
        Retry(**{"retries": 1, keyword: value})


@pytest.mark.parametrize(
    ("keyword", "spelling"),
    [
        pytest.param("retries", "retry=Retry(3)", id="retries"),
        pytest.param("retry_if", "retry=Retry(3, when=...)", id="retry_if"),
        pytest.param("retry_body_limit", "retry=Retry(3, body_limit=...)", id="retry_body_limit"),
        pytest.param("retry_backoff", "retry=Retry(3, backoff=...)", id="retry_backoff"),
    ],
)
def test_a_removed_retry_keyword_is_refused_showing_the_new_spelling(
    session: Any, keyword: str, spelling: str
) -> None:
    removed: dict[str, Any] = {keyword: 1}  # what untyped code can still pass
    with pytest.raises(TypeError, match=re.escape(f"{keyword}= was removed; write {spelling}")):
        SessionMiddleware(lambda e, s: [], session, **removed)


@pytest.mark.parametrize("value", [3, "3", {"retries": 3}])
def test_retry_must_be_a_retry_object(session: Any, value: Any) -> None:
    with pytest.raises(TypeError, match=re.escape("retry=Retry(3)")):
        SessionMiddleware(lambda e, s: [], session, retry=value)


def test_retry_with_no_retries_costs_nothing(session: Any) -> None:
    assert SessionMiddleware(lambda e, s: [], session, retry=Retry(0)).retry is None


def test_report_exception_outside_a_retrying_middleware_does_nothing(
    session: Any, models: Models, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"PATH_INFO": "/"}
    with caplog.at_level(logging.DEBUG, logger="wsgi_sqla"):
        report_exception(environ, serialization_failure())
    assert environ == {"PATH_INFO": "/"}
    assert caplog.records == []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        models.User(name="ann").save()
        report_exception(environ, serialization_failure())
        start_response("200 OK", [])
        return [b""]

    assert serve(SessionMiddleware(app, session)).status == "200 OK"
    assert probe.names() == ["ann"], "a middleware that does not retry acted on the report"


# -- through the frameworks, which turn view exceptions into a 500 -----------------


def flask_app(models: Models, failures: int, hook: bool) -> tuple[Any, list[int]]:
    app = flask.Flask("retry_through_flask")
    attempts: list[int] = []

    @app.post("/users")
    def create() -> Any:
        attempts.append(1)
        models.User(name=flask.request.get_json()["name"]).save()
        if len(attempts) <= failures:
            raise serialization_failure()
        return {"attempts": len(attempts)}, 201

    if hook:
        report_flask_exceptions(app)
    return app, attempts


def bottle_app(models: Models, failures: int, hook: bool) -> tuple[Any, list[int]]:
    app = bottle.Bottle()
    attempts: list[int] = []

    @app.post("/users")
    def create() -> Any:
        attempts.append(1)
        payload: Any = bottle.request.json
        models.User(name=payload["name"]).save()
        if len(attempts) <= failures:
            raise serialization_failure()
        bottle.response.status = 201
        return {"attempts": len(attempts)}

    if hook:
        report_bottle_exceptions(app)
    return app, attempts


FRAMEWORKS = pytest.mark.parametrize("framework", [flask_app, bottle_app], ids=["flask", "bottle"])


def post_json(app: Any, name: str) -> Exchange:
    body = json.dumps({"name": name}).encode()
    return serve(
        app, body=body, method="POST", path="/users", environ={"CONTENT_TYPE": "application/json"}
    )


@FRAMEWORKS
def test_framework_hook_hands_the_view_error_to_the_middleware_for_a_retry(
    framework: Any, session: Any, models: Models, probe: Probe, delays: list[float]
) -> None:
    app, _attempts = framework(models, failures=2, hook=True)
    result = post_json(SessionMiddleware(app, session, retry=Retry(3)), "ann")
    assert result.status is not None and result.status.startswith("201"), result.body
    assert result.start_responses == 1
    assert json.loads(result.body) == {"attempts": 3}
    assert probe.names() == ["ann"]
    assert probe.checked_out() == 0


@FRAMEWORKS
@pytest.mark.parametrize(
    ("failures", "hook", "runs"),
    [
        pytest.param(1, False, 1, id="without-the-hook"),
        pytest.param(10, True, 3, id="retries-used-up"),
    ],
)
def test_framework_500_goes_out_once_when_the_request_is_not_run_again(
    framework: Any,
    session: Any,
    models: Models,
    probe: Probe,
    delays: list[float],
    failures: int,
    hook: bool,
    runs: int,
) -> None:
    app, attempts = framework(models, failures=failures, hook=hook)
    result = post_json(SessionMiddleware(app, session, retry=Retry(2)), "ann")
    assert result.status is not None and result.status.startswith("500")
    assert result.start_responses == 1
    assert len(attempts) == runs
    assert probe.names() == []
    assert probe.checked_out() == 0


@FRAMEWORKS
def test_reported_error_rolls_back_even_when_the_veto_would_commit(
    framework: Any, session: Any, models: Models, probe: Probe, delays: list[float]
) -> None:
    app, attempts = framework(models, failures=1, hook=True)
    middleware = SessionMiddleware(
        app, session, retry=Retry(1), commit_veto=lambda environ, status, headers: False
    )
    assert post_json(middleware, "ann").status.startswith("201")  # type: ignore[union-attr]
    assert len(attempts) == 2
    assert probe.names() == ["ann"]


@FRAMEWORKS
def test_framework_hook_ignores_errors_that_are_not_transient(
    framework: Any, session: Any, models: Models, probe: Probe, delays: list[float]
) -> None:
    app, attempts = framework(models, failures=0, hook=True)
    ok = SessionMiddleware(app, session, retry=Retry(3, when=lambda exc: False))
    assert post_json(ok, "ann").status.startswith("201")  # type: ignore[union-attr]
    app, attempts = framework(models, failures=1, hook=True)
    failing = SessionMiddleware(app, session, retry=Retry(3, when=lambda exc: False))
    assert post_json(failing, "bob").status.startswith("500")  # type: ignore[union-attr]
    assert len(attempts) == 1
    assert probe.names() == ["ann"]
