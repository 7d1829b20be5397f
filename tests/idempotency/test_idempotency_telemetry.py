"""What became of each keyed request is on its unit span and in the idempotency metric."""

from __future__ import annotations

from typing import Any

from idempotency_support import Orders, keyed
from sqlalchemy.orm import scoped_session
from telemetry.recorded import Recorded, attributes, key

from wsgi_sqla import IdempotencyKeys, SessionMiddleware


def test_a_run_is_executed_a_repeat_replayed_another_body_a_conflict(
    session: scoped_session[Any], keys: IdempotencyKeys, orders: Orders, telemetry: Recorded
) -> None:
    app = SessionMiddleware(orders.app, session, idempotency=keys)

    keyed(app)
    keyed(app)
    keyed(app, body=b"another order")

    [unit] = telemetry.units()  # the repeat and the conflict run no unit of work
    assert attributes(unit)["wsgi_sqla.idempotency"] == "executed"
    assert telemetry.metrics()["wsgi_sqla.idempotency"] == {
        key(wsgi_sqla__idempotency="executed"): 1,
        key(wsgi_sqla__idempotency="replayed"): 1,
        key(wsgi_sqla__idempotency="conflict"): 1,
    }
