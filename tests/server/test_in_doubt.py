"""A COMMIT in doubt that nothing can settle: no key, no :func:`wsgi_sqla.resolve_in_doubt`.

The application reaches its database through a :class:`CommitCuttingProxy`,
which forwards the COMMIT, lets the server answer it and hangs up before
the answer reaches the client. The row is committed, yet the commit raised
a lost-connection error that proves nothing about the outcome. The unit of
work must say so (:class:`wsgi_sqla.CommitInDoubtError`, a log that calls the
outcome unknown) and must never run the work again: that is what a request
without a key gets on MariaDB, and on PostgreSQL without the option. The
database is read through the test's own direct connection, never through
the proxy.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import insert

import wsgi_sqla
from wsgi_sqla import Retry, SessionMiddleware, transaction

from .doubt import Doubt, messages, rows

if TYPE_CHECKING:
    from telemetry.recorded import Recorded

pytestmark = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)


def test_request_whose_commit_is_cut_answers_500_logs_unknown_and_keeps_the_row(
    doubt: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")

    tag, seen = doubt.post(SessionMiddleware(doubt.app, doubt.db))

    assert seen.client_status.startswith("500")
    assert doubt.copies(tag) == 1, "the server got the COMMIT: the row is committed"
    logged = messages(caplog)
    assert any("the outcome is unknown" in message for message in logged), logged
    assert not any("rolled back" in message for message in logged), logged


def test_request_whose_commit_is_cut_is_not_retried_whatever_the_retry_predicate_says(
    doubt: Doubt,
) -> None:
    middleware = SessionMiddleware(doubt.app, doubt.db, retry=Retry(3, when=lambda exc: True))

    tag, seen = doubt.post(middleware)

    assert doubt.calls == [tag], "the view ran again after a commit in doubt"
    assert doubt.copies(tag) == 1
    assert seen.client_status.startswith("500")


def test_transaction_whose_commit_is_cut_raises_commit_in_doubt(doubt: Doubt) -> None:
    tag = uuid.uuid4().hex
    doubt.proxy.arm()

    with pytest.raises(wsgi_sqla.CommitInDoubtError), transaction(doubt.db):
        doubt.db.execute(insert(rows).values(tag=tag))

    assert doubt.proxy.armed == 0, "the block never sent a COMMIT"
    assert doubt.copies(tag) == 1


def test_thirty_cut_commits_are_thirty_500s_logged_unknown_none_a_success(
    doubt: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    middleware = SessionMiddleware(doubt.app, doubt.db)
    false_failures = false_successes = in_doubt_logs = 0
    statuses = []
    for _ in range(30):
        caplog.clear()
        tag, seen = doubt.post(middleware)
        status, committed = int(seen.client_status[:3]), doubt.copies(tag) == 1
        statuses.append(status)
        false_failures += status >= 500 and committed
        false_successes += 200 <= status < 300 and not committed
        logged = messages(caplog)
        in_doubt_logs += any("the outcome is unknown" in m for m in logged) and not any(
            "rolled back" in m for m in logged
        )
    print(
        f"\n{doubt.db.get_bind().dialect.name}: 30 cut COMMITs: "
        f"{false_failures} false failures (>= 500, row committed), "
        f"{false_successes} false successes (2xx, row missing), "
        f"{in_doubt_logs} logged as unknown, statuses {sorted(set(statuses))}"
    )

    assert doubt.proxy.cuts == 30
    assert false_successes == 0
    assert statuses == [500] * 30
    assert false_failures == 30, "every cut COMMIT reached the server: every row is committed"
    assert in_doubt_logs == 30


def test_commit_in_doubt_is_its_own_outcome_in_the_telemetry(
    doubt: Doubt, telemetry: Recorded
) -> None:
    from telemetry.recorded import attributes, key

    doubt.post(SessionMiddleware(doubt.app, doubt.db))

    [unit] = telemetry.units()
    assert attributes(unit) == {
        "wsgi_sqla.owner": "request",
        "wsgi_sqla.outcome": "in_doubt",
        "wsgi_sqla.reason": "connection_lost",
        "http.response.status_code": 201,
        "error.type": "CommitInDoubtError",
    }
    assert telemetry.metrics()["wsgi_sqla.commits.in_doubt"] == {key(): 1}
