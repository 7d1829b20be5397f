"""Keys belong to a client; safe methods ignore them."""

from __future__ import annotations

from typing import Any

import pytest
from idempotency_support import Orders, keyed, stored_rows
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session
from support import serve

from wsgi_sqla import IdempotencyKeys, SessionMiddleware
from wsgi_sqla.testing import count_round_trips


def test_one_clients_key_never_replays_another_clients_response(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    ann = keyed(app, environ={"HTTP_AUTHORIZATION": "Bearer ann"})
    bob = keyed(app, environ={"HTTP_AUTHORIZATION": "Bearer bob"})
    assert "Idempotent-Replayed" not in dict(bob.headers)
    assert bob.body != ann.body
    again = keyed(app, environ={"HTTP_AUTHORIZATION": "Bearer ann"})
    assert again.body == ann.body
    assert (orders.runs, orders.count(engine)) == (2, 2)


def test_a_custom_scope_decides_who_shares_keys(
    session: scoped_session[Any], engine: Engine, orders: Orders
) -> None:
    by_user = IdempotencyKeys(scope=lambda environ: environ.get("HTTP_X_USER", ""))
    by_user.table.create(engine)
    try:
        app = SessionMiddleware(orders.app, session, idempotency=by_user)
        keyed(app, environ={"HTTP_X_USER": "1", "HTTP_AUTHORIZATION": "Bearer old"})
        same_user = keyed(app, environ={"HTTP_X_USER": "1", "HTTP_AUTHORIZATION": "Bearer new"})
        other_user = keyed(app, environ={"HTTP_X_USER": "2"})
        assert dict(same_user.headers).get("Idempotent-Replayed") == "true"
        assert "Idempotent-Replayed" not in dict(other_user.headers)
        assert orders.runs == 2
    finally:
        by_user.table.drop(engine)


def test_the_scope_is_stored_as_a_digest(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app, environ={"HTTP_AUTHORIZATION": "Bearer secret-token"})
    [row] = stored_rows(engine, keys.table)
    assert "secret" not in row.scope and len(row.scope) == 64


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_safe_method_ignores_the_key_at_no_cost(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders, method: str
) -> None:
    with engine.connect():
        pass
    configured = SessionMiddleware(orders.app, session, idempotency=keys)
    plain = SessionMiddleware(orders.app, session)
    key = {"HTTP_IDEMPOTENCY_KEY": '"8e03978e"'}
    with count_round_trips(engine) as without_feature:
        serve(plain, method=method, environ=key)
    with count_round_trips(engine) as with_key:
        serve(configured, method=method, environ=key)
    with count_round_trips(engine) as once_more:
        serve(configured, method=method, environ=key)
    assert orders.runs == 3
    assert with_key == once_more == without_feature
    assert stored_rows(engine, keys.table) == []


def test_a_request_without_a_key_costs_no_extra_round_trip(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    with engine.connect():
        pass
    configured = SessionMiddleware(orders.app, session, idempotency=keys)
    plain = SessionMiddleware(orders.app, session)
    with count_round_trips(engine) as without_feature:
        assert keyed(plain, None).status == "201 Created"
    with count_round_trips(engine) as configured_no_key:
        assert keyed(configured, None).status == "201 Created"
    assert configured_no_key == without_feature


def test_only_the_configured_methods_take_keys(
    session: scoped_session[Any], engine: Engine, orders: Orders
) -> None:
    put_only = IdempotencyKeys(methods=["put"])
    put_only.table.create(engine)
    try:
        app = SessionMiddleware(orders.app, session, idempotency=put_only)
        keyed(app)
        keyed(app)  # POST is not configured: the header means nothing
        keyed(app, method="PUT")
        assert dict(keyed(app, method="PUT").headers)["Idempotent-Replayed"] == "true"
        assert orders.runs == 3
    finally:
        put_only.table.drop(engine)
