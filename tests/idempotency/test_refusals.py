"""What the middleware answers itself: 400, 413 and 422, as RFC 9457 problems, running nothing."""

from __future__ import annotations

from typing import Any

import pytest
from idempotency_support import Orders, keyed, problem_of, stored_rows
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

from wsgi_sqla import IdempotencyKeys, SessionMiddleware


def test_a_required_key_that_is_missing_gets_400(
    session: scoped_session[Any], engine: Engine, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=IdempotencyKeys(required=True))
    refused = keyed(app, None)
    assert refused.status == "400 Bad Request"
    assert "Idempotency-Key" in problem_of(refused)["detail"]
    assert (orders.runs, orders.count(engine)) == (0, 0)


def test_without_required_a_request_without_a_key_runs_as_usual(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    assert keyed(app, None).status == keyed(app, None).status == "201 Created"
    assert (orders.runs, orders.count(engine)) == (2, 2)
    assert stored_rows(engine, keys.table) == []


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param('""', id="empty-string"),
        pytest.param("a" * 256, id="token-over-255"),
        pytest.param('"' + "a" * 256 + '"', id="string-over-255"),
        pytest.param('"unterminated', id="unterminated-string"),
        pytest.param('"a"b', id="text-after-the-string"),
        pytest.param("two words", id="space-in-a-token"),
        pytest.param("a,b", id="a-list"),
        pytest.param('"tab\there"', id="control-character"),
        pytest.param('"\\n"', id="bad-escape"),
        pytest.param("clé", id="not-ascii"),
    ],
)
def test_a_malformed_key_gets_400_and_runs_nothing(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders, header: str
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    refused = keyed(app, header)
    assert refused.status == "400 Bad Request"
    assert "Malformed" in problem_of(refused)["title"]
    assert orders.runs == 0
    assert stored_rows(engine, keys.table) == []


@pytest.mark.parametrize(
    "header",
    ["a" * 255, '"' + "a" * 255 + '"', '"with \\"quotes\\" and spaces"', "550e8400-e29b:41d4/a716"],
)
def test_a_well_formed_key_is_accepted(
    session: scoped_session[Any], keys: IdempotencyKeys, orders: Orders, header: str
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    assert keyed(app, header).status == "201 Created"


def test_a_body_over_the_limit_gets_413(
    session: scoped_session[Any], engine: Engine, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=IdempotencyKeys(body_limit=10))
    refused = keyed(app, body=b"x" * 11)
    assert refused.status == "413 Content Too Large"
    assert "10 bytes" in problem_of(refused)["detail"]
    assert orders.runs == 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"body": b"pen"}, id="body"),
        pytest.param({"path": "/orders/other"}, id="path"),
        pytest.param({"environ": {"QUERY_STRING": "express=1"}}, id="query"),
        pytest.param({"environ": {"CONTENT_TYPE": "application/json"}}, id="content-type"),
        pytest.param({"method": "PATCH"}, id="method"),
    ],
)
def test_the_same_key_for_a_different_request_gets_422(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders, change: Any
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app)
    refused = keyed(app, **change)
    assert refused.status == "422 Unprocessable Content"
    assert "new key" in problem_of(refused)["detail"]
    assert (orders.runs, orders.count(engine)) == (1, 1)
