"""A COMMIT in doubt settled by PostgreSQL: :func:`wsgi_sqla.resolve_in_doubt`.

The application's engine reaches PostgreSQL through a
:class:`CommitCuttingProxy` and has the option, so a unit that wrote reads
its transaction id before COMMIT. The proxy cuts the connection right after
forwarding the COMMIT (the server commits, the client hears nothing) or
right before (the server never gets it and rolls back). The unit asks
``pg_xact_status`` on a fresh connection and answers the truth: the
application's response for a committed transaction, an error (or a retry)
for one that is not. The database is read through the test's own direct
connection, never through the proxy.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import insert

from wsgi_sqla import (
    NotCommittedError,
    Retry,
    SessionMiddleware,
    after_commit,
    resolve_in_doubt,
    transaction,
)

from .doubt import Doubt, messages, rows

pytestmark = pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)


@pytest.fixture
def resolving(doubt: Doubt) -> Doubt:
    """The proxied application, with the option on its engine."""
    resolve_in_doubt(doubt.proxied)
    return doubt


def test_commit_cut_after_the_server_got_it_answers_the_application_response(
    resolving: Doubt,
) -> None:
    tag, seen = resolving.post(SessionMiddleware(resolving.app, resolving.db))

    assert seen.client_status == "201 Created"
    assert seen.body == tag.encode()
    assert resolving.copies(tag) == 1
    assert resolving.calls == [tag]


def test_commit_resolved_as_committed_is_logged_with_how(
    resolving: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_sqla")

    resolving.post(SessionMiddleware(resolving.app, resolving.db))

    logged = messages(caplog, logging.WARNING)
    assert any(
        "resolved: committed" in m and "pg_xact_status(" in m and "'committed'" in m for m in logged
    ), logged
    assert not any("unknown" in m for m in logged), logged


def test_commit_resolved_as_committed_runs_the_after_commit_hooks(resolving: Doubt) -> None:
    ran: list[str] = []

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        after_commit(ran.append, str(environ["QUERY_STRING"]))
        return resolving.app(environ, start_response)

    tag, _seen = resolving.post(SessionMiddleware(app, resolving.db))

    assert ran == [tag]


def test_commit_cut_before_the_server_got_it_answers_500_with_nothing_committed(
    resolving: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")

    tag, seen = resolving.post(SessionMiddleware(resolving.app, resolving.db), forward=False)

    assert seen.client_status.startswith("500")
    assert resolving.copies(tag) == 0
    logged = messages(caplog)
    assert any("resolved: not committed" in m and "'aborted'" in m for m in logged), logged


def test_commit_resolved_as_not_committed_is_run_again_under_retry(resolving: Doubt) -> None:
    never_transient = Retry(1, when=lambda exc: False)
    middleware = SessionMiddleware(resolving.app, resolving.db, retry=never_transient)

    tag, seen = resolving.post(middleware, forward=False)

    assert seen.client_status == "201 Created"
    assert resolving.calls == [tag, tag]
    assert resolving.copies(tag) == 1


def test_transaction_whose_commit_resolved_as_committed_returns_normally(
    resolving: Doubt,
) -> None:
    tag = uuid.uuid4().hex
    resolving.proxy.arm()

    with transaction(resolving.db):
        resolving.db.execute(insert(rows).values(tag=tag))

    assert resolving.proxy.cuts == 1
    assert resolving.copies(tag) == 1


def test_transaction_whose_commit_resolved_as_not_committed_raises_not_committed(
    resolving: Doubt,
) -> None:
    tag = uuid.uuid4().hex
    resolving.proxy.arm(forward=False)

    with pytest.raises(NotCommittedError), transaction(resolving.db):
        resolving.db.execute(insert(rows).values(tag=tag))

    assert resolving.proxy.cuts == 1
    assert resolving.copies(tag) == 0


def test_commit_whose_lookup_cannot_reach_the_database_answers_500_outcome_unknown(
    doubt: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    resolve_in_doubt(doubt.proxied, wait=0.2)

    tag, seen = doubt.post(SessionMiddleware(doubt.app, doubt.db), then_refuse=True)

    assert doubt.proxy.cuts == 1
    assert seen.client_status.startswith("500")
    assert doubt.copies(tag) == 1, "the server got the COMMIT"
    logged = messages(caplog)
    assert any("the outcome is unknown" in m and "not asked" in m for m in logged), logged


def test_servers_before_13_are_asked_with_the_txid_functions(
    resolving: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL 15 still has txid_current_if_assigned() and txid_status(): the
    # dialect is told the server is 12 so that the older queries run for real.
    caplog.set_level(logging.WARNING, logger="wsgi_sqla")
    with resolving.proxied.connect():
        pass
    resolving.proxied.dialect.server_version_info = (12, 0)

    tag, seen = resolving.post(SessionMiddleware(resolving.app, resolving.db))

    assert seen.client_status == "201 Created"
    assert resolving.copies(tag) == 1
    assert any("txid_status(" in m for m in messages(caplog, logging.WARNING))


def test_thirty_cut_commits_answer_the_truth_without_keys(resolving: Doubt) -> None:
    middleware = SessionMiddleware(resolving.app, resolving.db)

    trial = resolving.trial(middleware, "resolve_in_doubt, no key")

    assert resolving.proxy.cuts == 30
    assert (trial.false_failures, trial.false_successes) == (0, 0)
    assert trial.statuses == [201] * 30
