"""Expired keys count as new, and expire_idempotency_keys() deletes them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from idempotency_support import Orders, keyed, stored_rows
from sqlalchemy import Engine, update
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla import IdempotencyKeys, SessionMiddleware, expire_idempotency_keys, transaction

PAST = datetime.datetime(2000, 1, 1)


def expire_all(engine: Engine, keys: IdempotencyKeys) -> None:
    with engine.begin() as connection:
        connection.execute(update(keys.table).values(expires_at=PAST))


def test_an_expired_key_counts_as_new(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app)
    expire_all(engine, keys)
    again = keyed(app)
    assert again.status == "201 Created"
    assert "Idempotent-Replayed" not in dict(again.headers)
    assert (orders.runs, orders.count(engine), len(stored_rows(engine, keys.table))) == (2, 2, 1)


def test_expire_deletes_expired_records_and_keeps_live_ones(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app, '"old"')
    expire_all(engine, keys)
    keyed(app, '"new"')
    assert expire_idempotency_keys(keys, engine) == 1
    assert [row.key for row in stored_rows(engine, keys.table)] == ["new"]


def test_expire_keeps_a_claim_whose_lease_still_runs(engine: Engine, keys: IdempotencyKeys) -> None:
    with engine.begin() as connection:
        connection.execute(
            keys.table.insert().values(
                scope="s",
                key="k",
                fingerprint="f",
                token="t",
                lease_until=datetime.datetime(2999, 1, 1),
                expires_at=PAST,
            )
        )
    assert expire_idempotency_keys(keys, engine) == 0


def test_expire_on_a_connection_runs_in_its_transaction(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    keyed(SessionMiddleware(orders.app, session, idempotency=keys))
    expire_all(engine, keys)
    with transaction(session):
        assert expire_idempotency_keys(keys, session.connection()) == 1
    assert stored_rows(engine, keys.table) == []


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("ttl", 0, ValueError),
        ("ttl", "1d", TypeError),
        ("lease", -1, ValueError),
        ("lease", float("inf"), ValueError),
        ("body_limit", -1, ValueError),
        ("response_limit", 1.5, TypeError),
        ("methods", ["GET"], ValueError),
        ("methods", [], ValueError),
        ("methods", "POST", TypeError),
        ("required", "yes", TypeError),
        ("scope", "Authorization", TypeError),
        ("table_name", "", TypeError),
        ("session", object(), TypeError),
    ],
)
def test_bad_options_are_refused_when_the_keys_are_made(
    option: str, value: Any, error: type
) -> None:
    with pytest.raises(error, match=f"IdempotencyKeys: {option}"):
        IdempotencyKeys(**{option: value})


def test_the_middleware_refuses_keys_on_a_session_it_does_not_own(
    session: scoped_session[Any], engine: Engine
) -> None:
    other = scoped_session(sessionmaker(bind=engine))
    with pytest.raises(ValueError, match="one of the middleware's sessions"):
        SessionMiddleware(lambda e, s: [], session, idempotency=IdempotencyKeys(session=other))
    with pytest.raises(TypeError, match="IdempotencyKeys"):
        SessionMiddleware(lambda e, s: [], session, idempotency="keys")  # type: ignore[arg-type]
