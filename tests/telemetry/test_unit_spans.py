"""Each unit of work is one ``wsgi_sqla.unit`` span saying what it decided and why.

The outcomes and reasons are a table: one request (or block, or task) per
row, through the real middleware on each database, and the span's
attributes compared whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import scoped_session
from support import Boom, Models, Probe, answering, serve

import wsgi_sqla
from wsgi_sqla import SessionMiddleware, force_commit, force_rollback, transaction

from .recorded import Recorded, SpanKind, StatusCode, attributes, trace
from .work import forcing, pledging, raising, save, swallowing

REQUESTS: list[tuple[str, str, Callable[[Models], Callable[[], None]], dict[str, Any]]] = [
    # id, status, the view's work, the expected attributes beyond the owner
    ("ok", "200 OK", save, {"outcome": "committed", "reason": "status"}),
    ("created", "201 Created", save, {"outcome": "committed", "reason": "status"}),
    ("not-found", "404 Not Found", save, {"outcome": "rolled_back", "reason": "status"}),
    ("server-error", "500 Oops", save, {"outcome": "rolled_back", "reason": "status"}),
    (
        "force-commit",
        "401 Unauthorized",
        lambda m: forcing(m, force_commit),
        {"outcome": "committed", "reason": "force_commit"},
    ),
    (
        "force-rollback",
        "200 OK",
        lambda m: forcing(m, force_rollback),
        {"outcome": "rolled_back", "reason": "force_rollback"},
    ),
    (
        "raised",
        "200 OK",
        raising,
        {"outcome": "rolled_back", "reason": "exception", "error": "Boom", "status": None},
    ),
    (
        "rejected",
        "200 OK",
        swallowing,
        {"outcome": "rolled_back", "reason": "rejected", "error": "RejectedWorkError"},
    ),
    (
        "commit-failed",
        "201 Created",
        pledging,
        {"outcome": "commit_failed", "reason": "exception", "error": "IntegrityError"},
    ),
]


def expected(owner: str, status: str | None, want: dict[str, Any]) -> dict[str, Any]:
    found = {
        "wsgi_sqla.owner": owner,
        "wsgi_sqla.outcome": want["outcome"],
        "wsgi_sqla.reason": want["reason"],
    }
    status = want.get("status", status)
    if status is not None:
        found["http.response.status_code"] = int(status[:3])
    if "error" in want:
        found["error.type"] = want["error"]
    return found


@pytest.mark.parametrize(
    ("status", "work", "want"),
    [pytest.param(status, work, want, id=name) for name, status, work, want in REQUESTS],
)
def test_request_span_says_what_was_decided_and_why(
    telemetry: Recorded,
    models: Models,
    engine: Engine,
    status: str,
    work: Callable[[Models], Callable[[], None]],
    want: dict[str, Any],
) -> None:
    if work is pledging and engine.dialect.name in ("mysql", "mariadb"):
        pytest.skip("MariaDB has no deferred foreign keys: nothing fails at COMMIT there")
    session = models.User.__session__
    serve(SessionMiddleware(answering(status, work(models)), session))

    span = telemetry.unit()
    assert attributes(span) == expected("request", status, want)
    assert span.kind is SpanKind.INTERNAL
    failed = "error" in want
    assert span.status.status_code is (StatusCode.ERROR if failed else StatusCode.UNSET)
    assert [event.name for event in span.events] == (["exception"] if failed else [])


def test_custom_veto_is_the_reason(telemetry: Recorded, models: Models) -> None:
    middleware = SessionMiddleware(
        answering("200 OK", save(models)),
        models.User.__session__,
        commit_veto=lambda environ, status, headers: True,
    )

    serve(middleware)

    assert attributes(telemetry.unit())["wsgi_sqla.reason"] == "veto"
    assert attributes(telemetry.unit())["wsgi_sqla.outcome"] == "rolled_back"


def test_truncated_body_is_the_reason(telemetry: Recorded, models: Models, probe: Probe) -> None:
    view = answering("201 Created", save(models))

    def app(environ: Any, start_response: Any) -> Any:
        environ["wsgi.input"].read()
        return view(environ, start_response)

    middleware = SessionMiddleware(app, models.User.__session__)
    serve(middleware, method="POST", body=b"short", environ={"CONTENT_LENGTH": "50"})

    assert attributes(telemetry.unit()) == expected(
        "request", "400 Bad Request", {"outcome": "rolled_back", "reason": "truncated"}
    )
    assert probe.names() == []


def test_request_without_database_work_is_one_span_and_no_child(
    telemetry: Recorded, session: scoped_session[Any]
) -> None:
    serve(SessionMiddleware(answering("200 OK"), session))

    span = telemetry.unit()
    assert attributes(span)["wsgi_sqla.outcome"] == "committed"
    assert telemetry.children(span) == []


def test_unit_span_is_a_child_of_the_current_span(telemetry: Recorded, models: Models) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("server") as server:
        serve(SessionMiddleware(answering("200 OK", save(models)), models.User.__session__))

    unit = telemetry.unit()
    assert unit.parent is not None and unit.context is not None
    assert unit.parent.span_id == server.get_span_context().span_id
    assert unit.context.trace_id == server.get_span_context().trace_id


SYSTEMS = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mariadb"}


@pytest.mark.parametrize(
    ("status", "operation"), [("201 Created", "COMMIT"), ("409 Conflict", "ROLLBACK")]
)
def test_commit_and_rollback_are_child_spans_of_the_unit(
    telemetry: Recorded, models: Models, db_name: str, status: str, operation: str
) -> None:
    serve(SessionMiddleware(answering(status, save(models)), models.User.__session__))

    unit = telemetry.unit()
    children = telemetry.children(unit)
    assert [span.name for span in children] == [operation]
    assert attributes(children[0]) == {
        "db.system.name": SYSTEMS[db_name],
        "db.operation.name": operation,
    }
    child = children[0]
    assert child.kind is SpanKind.CLIENT
    assert unit.start_time is not None and unit.end_time is not None
    assert child.start_time is not None and child.end_time is not None
    assert unit.start_time <= child.start_time
    assert child.end_time <= unit.end_time


def test_failed_commit_span_records_the_error(
    telemetry: Recorded, models: Models, engine: Engine
) -> None:
    if engine.dialect.name in ("mysql", "mariadb"):
        pytest.skip("MariaDB has no deferred foreign keys: nothing fails at COMMIT there")
    serve(SessionMiddleware(answering("201 Created", pledging(models)), models.User.__session__))

    commit = next(s for s in telemetry.children(telemetry.unit()) if s.name == "COMMIT")
    assert attributes(commit)["error.type"] == "IntegrityError"
    assert commit.status.status_code is StatusCode.ERROR


def test_each_session_of_a_unit_gets_its_own_commit_span(
    telemetry: Recorded, models: Models, engine: Engine
) -> None:
    other: scoped_session[Any] = scoped_session(models.User.__session__.session_factory)
    try:

        def work() -> None:
            models.User(name="ann").save()
            other.execute(select(models.User.id)).all()  # a read: SQLite takes one writer

        serve(SessionMiddleware(answering("200 OK", work), models.User.__session__, other))
    finally:
        other.remove()

    names = [span.name for span in telemetry.children(telemetry.unit())]
    assert names == ["COMMIT", "COMMIT"]


BLOCKS: list[tuple[str, Callable[[Models], Callable[[], None]], dict[str, Any]]] = [
    ("ended", save, {"outcome": "committed", "reason": "ended"}),
    ("raised", raising, {"outcome": "rolled_back", "reason": "exception", "error": "Boom"}),
    (
        "force-rollback",
        lambda m: forcing(m, force_rollback),
        {"outcome": "rolled_back", "reason": "force_rollback"},
    ),
]


@pytest.mark.parametrize(
    ("work", "want"), [pytest.param(work, want, id=name) for name, work, want in BLOCKS]
)
def test_transaction_block_span_says_what_was_decided_and_why(
    telemetry: Recorded,
    models: Models,
    work: Callable[[Models], Callable[[], None]],
    want: dict[str, Any],
) -> None:
    with (
        pytest.raises(Boom) if "error" in want else _nothing(),
        transaction(models.User.__session__),
    ):
        work(models)()

    assert attributes(telemetry.unit()) == expected("transaction", None, want)


def test_joined_block_adds_no_span(telemetry: Recorded, models: Models) -> None:
    def work() -> None:
        with transaction(models.User.__session__):
            models.User(name="ann").save()

    serve(SessionMiddleware(answering("200 OK", work), models.User.__session__))

    assert attributes(telemetry.unit())["wsgi_sqla.owner"] == "request"


def test_after_commit_hook_runs_inside_the_unit_span(telemetry: Recorded, models: Models) -> None:
    def hook() -> None:
        with transaction(models.User.__session__):
            models.User(name="bob").save()

    def work() -> None:
        models.User(name="ann").save()
        wsgi_sqla.after_commit(hook)

    serve(SessionMiddleware(answering("200 OK", work), models.User.__session__))

    owners = [attributes(span)["wsgi_sqla.owner"] for span in telemetry.units()]
    assert owners == ["transaction", "request"], "the hook's block ends before the request"


def _nothing() -> Any:
    return contextlib.nullcontext()


def test_listener_failure_in_commit_is_commit_failed(telemetry: Recorded, models: Models) -> None:
    session = models.User.__session__

    def refuse(target: Any) -> None:
        raise Boom("before_commit refused")

    def save_then_listen() -> None:
        models.User(name="ann").save()
        _listen(session, refuse)

    serve(SessionMiddleware(answering("200 OK", save_then_listen), session))

    assert attributes(telemetry.unit()) == expected(
        "request", "200 OK", {"outcome": "commit_failed", "reason": "exception", "error": "Boom"}
    )


def _listen(session: scoped_session[Any], refuse: Callable[[Any], None]) -> None:
    event.listen(session.registry(), "before_commit", refuse)


def test_celery_task_span_is_owned_by_the_task(telemetry: Recorded, models: Models) -> None:
    from celery import Celery

    from wsgi_sqla.celery import task_base

    app = Celery("wsgi_sqla_telemetry", broker="memory://", set_as_current=False)

    @app.task(base=task_base(models.User.__session__), shared=False)
    def add_user(name: str) -> None:
        models.User(name=name).save()

    add_user.apply(("ann",)).get()

    assert attributes(telemetry.unit()) == expected(
        "task", None, {"outcome": "committed", "reason": "ended"}
    )
