"""The metrics count exactly what a scripted mix of units did."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.errors import SerializationFailure
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import scoped_session
from support import Boom, Models, answering, serve

from wsgi_sqla import Retry, SessionMiddleware, force_commit, transaction
from wsgi_sqla._telemetry import idempotency

from .recorded import Recorded, attributes, key

SYSTEMS = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mariadb"}


def test_metric_values_match_a_scripted_mix_of_units(
    telemetry: Recorded, models: Models, db_name: str
) -> None:
    session = models.User.__session__
    names = iter(f"user{n}" for n in range(100))

    def save() -> None:
        models.User(name=next(names)).save()

    def save_and_raise() -> None:
        save()
        raise Boom("the view failed")

    def save_and_force() -> None:
        save()
        force_commit()

    for status, work, times in [
        ("200 OK", save, 3),
        ("404 Not Found", save, 2),
        ("200 OK", save_and_raise, 1),
        ("403 Forbidden", save_and_force, 1),
        ("200 OK", lambda: None, 2),  # no database work: units, but no COMMIT
    ]:
        for _ in range(times):
            serve(SessionMiddleware(answering(status, work), session))
    with transaction(session):
        save()

    found = telemetry.metrics()

    def unit(owner: str, outcome: str, reason: str) -> Any:
        return key(wsgi_sqla__owner=owner, wsgi_sqla__outcome=outcome, wsgi_sqla__reason=reason)

    assert found["wsgi_sqla.units"] == {
        unit("request", "committed", "status"): 5,
        unit("request", "rolled_back", "status"): 2,
        unit("request", "rolled_back", "exception"): 1,
        unit("request", "committed", "force_commit"): 1,
        unit("transaction", "committed", "ended"): 1,
    }
    system = SYSTEMS[db_name]
    assert found["db.client.operation.duration"] == {
        key(db__system__name=system, db__operation__name="COMMIT"): 5,
        key(db__system__name=system, db__operation__name="ROLLBACK"): 3,
    }
    assert "wsgi_sqla.commits.in_doubt" not in found
    assert "wsgi_sqla.retries" not in found


def test_retried_request_has_its_attempt_number_and_counts_one_retry(
    telemetry: Recorded, models: Models
) -> None:
    session = models.User.__session__
    runs: list[int] = []

    def work() -> None:
        runs.append(1)
        models.User(name="ann").save()
        if len(runs) == 1:
            raise OperationalError(
                "UPDATE ...", {}, SerializationFailure("could not serialize access")
            )

    middleware = SessionMiddleware(
        answering("201 Created", work), session, retry=Retry(2, backoff=0)
    )
    serve(middleware, method="POST")

    spans = telemetry.units()
    assert [
        (
            attributes(span)["wsgi_sqla.attempt"],
            attributes(span)["wsgi_sqla.outcome"],
            attributes(span)["wsgi_sqla.reason"],
        )
        for span in spans
    ] == [(1, "rolled_back", "exception"), (2, "committed", "status")]
    assert telemetry.metrics()["wsgi_sqla.retries"] == {key(error__type="OperationalError"): 1}


@pytest.mark.parametrize("outcome", ["executed", "replayed", "conflict"])
def test_idempotency_outcome_is_on_the_unit_span_and_counted(
    telemetry: Recorded, session: scoped_session[Any], outcome: str
) -> None:
    serve(SessionMiddleware(answering("200 OK", lambda: idempotency(outcome)), session))

    assert attributes(telemetry.unit())["wsgi_sqla.idempotency"] == outcome
    assert telemetry.metrics()["wsgi_sqla.idempotency"] == {key(wsgi_sqla__idempotency=outcome): 1}
