"""What a keyed request costs, exactly, next to the same POST without a key.

Counted with :func:`wsgi_sqla.testing.count_round_trips`. A new key costs
one short transaction of its own for the claim (insert-or-nothing, then
read back) on a second checkout, and one ``UPDATE`` in the request's own
transaction; a replay costs the claim's transaction and nothing else.
Pool resets are left out: whether they are real ROLLBACKs depends on the
driver (PyMySQL sends one, psycopg does not).
"""

from __future__ import annotations

from typing import Any

from idempotency_support import Orders, keyed
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

from wsgi_sqla import IdempotencyKeys, SessionMiddleware
from wsgi_sqla.testing import RoundTrips, count_round_trips


def without_resets(counts: RoundTrips) -> tuple[int, int, int, int, int]:
    return (counts.statements, counts.begin, counts.commit, counts.rollback, counts.checkouts)


def test_a_new_key_costs_one_claim_transaction_and_one_update(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app, '"warm-up"')
    with count_round_trips(engine) as unkeyed:
        keyed(app, None)
    with count_round_trips(engine) as first:
        keyed(app)
    # (statements, begin, commit, rollback, checkouts)
    assert without_resets(unkeyed) == (1, 1, 1, 0, 1)
    assert without_resets(first) == (1 + 2 + 1, 2, 2, 0, 2)


def test_a_replay_costs_the_claim_transaction_only(
    session: scoped_session[Any], engine: Engine, keys: IdempotencyKeys, orders: Orders
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)
    keyed(app)
    with count_round_trips(engine) as replay:
        assert keyed(app).headers[-1] == ("Idempotent-Replayed", "true")
    assert without_resets(replay) == (2, 1, 1, 0, 1)
