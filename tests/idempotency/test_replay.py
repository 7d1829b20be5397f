"""A committed keyed request is replayed, never run again; only committed outcomes are."""

from __future__ import annotations

from typing import Any

import pytest
from idempotency_support import Orders, keyed, problem_of, stored_rows
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session
from support import Boom

from wsgi_sqla import IdempotencyKeys, Retry, SessionMiddleware, force_rollback


def test_a_repeat_gets_the_stored_response_byte_for_byte_and_the_view_ran_once(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    first = keyed(app)
    again = keyed(app)
    assert first.status == again.status == "201 Created"
    assert again.body == first.body
    assert dict(again.headers) == {**dict(first.headers), "Idempotent-Replayed": "true"}
    assert "Idempotent-Replayed" not in dict(first.headers)
    assert orders.runs == 1
    assert orders.count(engine) == 1


def test_a_replay_runs_no_after_commit_hook(
    session: scoped_session[Any], keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app)
    keyed(app)
    assert orders.hooks == 1


def test_the_record_is_committed_with_the_work(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    first = keyed(app)
    [row] = stored_rows(engine, keys.table)
    assert (row.key, row.status, bytes(row.body)) == ("8e03978e", "201 Created", first.body)
    assert row.lease_until is None


@pytest.mark.parametrize("header", ['"8e03978e"', "8e03978e", ' "8e03978e" '])
def test_a_quoted_string_and_a_bare_token_are_the_same_key(
    session: scoped_session[Any], keys: IdempotencyKeys, orders: Orders, header: str
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app, '"8e03978e"')
    assert dict(keyed(app, header).headers)["Idempotent-Replayed"] == "true"
    assert orders.runs == 1


def fail_with_400(orders: Orders) -> None:
    orders.status = "400 Bad Request"


def fail_with_exception(orders: Orders) -> None:
    orders.fail = Boom("the view failed")


def fail_with_forced_rollback(orders: Orders) -> None:
    orders.before = force_rollback


@pytest.mark.parametrize(
    ("fail", "status"),
    [
        (fail_with_400, "400 Bad Request"),
        (fail_with_exception, "500 Internal Server Error"),
        (fail_with_forced_rollback, "201 Created"),
    ],
)
def test_a_rolled_back_first_attempt_records_nothing_and_its_retry_runs(
    session: scoped_session[Any],
    engine: Engine,
    keys: IdempotencyKeys,
    orders: Orders,
    fail: Any,
    status: str,
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    fail(orders)
    assert keyed(app).client_status == status
    assert stored_rows(engine, keys.table) == []
    assert orders.count(engine) == 0
    orders.status, orders.fail, orders.before = "201 Created", None, lambda: None
    retried = keyed(app)
    assert retried.status == "201 Created"
    assert "Idempotent-Replayed" not in dict(retried.headers)
    assert (orders.runs, orders.count(engine)) == (2, 1)


def test_a_transient_failure_is_retried_and_recorded_once(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    def transient_once() -> None:
        if orders.runs == 1:
            raise Boom("transient")

    orders.before = transient_once
    retry = Retry(2, when=lambda exc: isinstance(exc, Boom), backoff=0)
    app = SessionMiddleware(orders.app, session, idempotency=keys, retry=retry)
    first = keyed(app)
    assert first.status == "201 Created"
    assert keyed(app).body == first.body
    assert (orders.runs, orders.count(engine), len(stored_rows(engine, keys.table))) == (2, 1, 1)


def test_a_response_above_the_stored_limit_is_committed_and_never_run_again(
    session: scoped_session[Any], engine: Engine, orders: Orders
) -> None:
    small = IdempotencyKeys(response_limit=100)
    small.table.create(engine)
    try:
        orders.body_size = 200
        app = SessionMiddleware(orders.app, session, idempotency=small)
        assert keyed(app).status == "201 Created"
        again = keyed(app)
        assert again.status == "409 Conflict"
        assert "201 Created" in problem_of(again)["detail"]
        assert (orders.runs, orders.count(engine)) == (1, 1)
    finally:
        small.table.drop(engine)


def test_an_exception_that_propagates_releases_the_claim(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys, errors="propagate")
    orders.fail = Boom("the view failed")
    assert isinstance(keyed(app).error, Boom)
    assert stored_rows(engine, keys.table) == []
    orders.fail = None
    assert keyed(app).status == "201 Created"
