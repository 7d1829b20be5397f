"""A duplicate of a running request gets 409 at once; a dead request's claim expires."""

from __future__ import annotations

import datetime
import threading
from typing import Any

from idempotency_support import Orders, keyed, problem_of, stored_rows
from sqlalchemy import Engine, update
from sqlalchemy.orm import scoped_session
from support import Exchange

from wsgi_sqla import IdempotencyKeys, SessionMiddleware

PAST = datetime.datetime(2000, 1, 1)


def in_thread(app: Any, seen: list[Exchange]) -> threading.Thread:
    thread = threading.Thread(target=lambda: seen.append(keyed(app)))
    thread.start()
    return thread


def test_a_duplicate_of_a_running_request_gets_409_without_waiting_for_it(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    running, release = threading.Event(), threading.Event()

    def hold() -> None:
        running.set()
        assert release.wait(30), "the duplicate was not answered while the first ran"

    orders.before = hold
    first: list[Exchange] = []
    thread = in_thread(app, first)
    assert running.wait(30)
    orders.before = lambda: None
    duplicate = keyed(app)  # answered while the first still holds its claim
    release.set()
    thread.join(30)
    assert duplicate.status == "409 Conflict"
    assert dict(duplicate.headers)["Retry-After"] == "1"
    assert "in a moment" in problem_of(duplicate)["detail"]
    assert first[0].status == "201 Created"
    assert (orders.runs, orders.count(engine)) == (1, 1)
    assert keyed(app).body == first[0].body


def test_a_claim_whose_lease_is_over_is_taken_over_by_the_retry(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    table = keys.table
    with engine.begin() as connection:  # what a worker killed mid-request leaves behind
        connection.execute(
            table.insert().values(
                scope=_digest(""),
                key="8e03978e",
                fingerprint="of the dead request",
                token="dead",
                lease_until=PAST,
                expires_at=datetime.datetime(2999, 1, 1),
            )
        )
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    assert keyed(app).status == "201 Created"
    assert (orders.runs, orders.count(engine)) == (1, 1)
    [row] = stored_rows(engine, keys.table)
    assert row.token != "dead" and row.status == "201 Created"


def test_a_request_that_outlived_its_lease_is_rolled_back_and_the_new_run_stands(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    second: list[Exchange] = []

    def outlive_the_lease() -> None:
        if orders.runs > 1:
            return
        with engine.begin() as connection:
            connection.execute(update(keys.table).values(lease_until=PAST))
        # Another worker takes the key over and commits, in its own thread and session.
        in_thread(app, second).join(30)

    orders.before = outlive_the_lease
    first = keyed(app)
    assert first.status == "409 Conflict"
    assert second[0].status == "201 Created"
    assert (orders.runs, orders.count(engine)) == (2, 1)
    assert keyed(app).body == second[0].body


def _digest(scope: str) -> str:
    import hashlib

    return hashlib.sha256(scope.encode()).hexdigest()
