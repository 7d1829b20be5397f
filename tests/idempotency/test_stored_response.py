"""stored_response(): whether a key's request committed, and what it answered.

For resolving a COMMIT whose outcome is unknown: the record exists only if
the request's unit committed, so a claim (running, or never committed) and
no row both read as ``None``.
"""

from __future__ import annotations

import threading
from typing import Any

from idempotency_support import Orders, keyed
from sqlalchemy import Engine, select
from sqlalchemy.orm import scoped_session

from wsgi_sqla import IdempotencyKeys, SessionMiddleware
from wsgi_sqla._idempotency import StoredResponse, stored_response


def test_a_committed_request_reads_as_its_response(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    first = keyed(SessionMiddleware(orders.app, session, idempotency=keys))
    found = stored_response(keys, engine, "", "8e03978e")
    assert found == StoredResponse(first.status or "", list(first.headers), first.body)
    with engine.connect() as connection:
        assert stored_response(keys, connection, "", "8e03978e") == found


def test_an_unknown_key_or_another_scope_reads_as_none(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    keyed(SessionMiddleware(orders.app, session, idempotency=keys))
    assert stored_response(keys, engine, "", "other") is None
    assert stored_response(keys, engine, "Bearer someone", "8e03978e") is None


def test_a_running_request_reads_as_none(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    seen: list[StoredResponse | None] = []
    orders.before = lambda: seen.append(stored_response(keys, engine, "", "8e03978e"))
    thread = threading.Thread(target=keyed, args=(app,))
    thread.start()
    thread.join(30)
    assert seen == [None]
    assert stored_response(keys, engine, "", "8e03978e") is not None


def test_with_a_token_only_the_record_of_that_claim_is_found(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    keyed(SessionMiddleware(orders.app, session, idempotency=keys))
    with engine.connect() as connection:
        token = connection.execute(select(keys.table.c.token)).scalar_one()
    assert stored_response(keys, engine, "", "8e03978e", token) is not None
    assert stored_response(keys, engine, "", "8e03978e", "another claim's token") is None
