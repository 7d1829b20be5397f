"""A COMMIT in doubt settled by pg_xact_status through a transaction-pooling PgBouncer.

The application reaches our PgBouncer (transaction mode, 4 server
connections) through a :class:`CommitCuttingProxy`, with
:func:`wsgi_sqla.resolve_in_doubt` on its engine. The transaction id is read
inside the transaction, on its server connection; the status is asked on a
fresh client connection, which PgBouncer may hand any server connection.
Cut after forwarding COMMIT, PgBouncer forwards it and the server commits;
cut before, PgBouncer closes the server connection in its transaction and the
server rolls back. Either way the client gets the truth, and PgBouncer's
server connections are left idle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from harness.pgbouncer import PgBouncer
from wsgi_sqla import SessionMiddleware, resolve_in_doubt

from ..doubt import Doubt, doubt_over, messages
from .checks import assert_nothing_left_open


@pytest.fixture
def direct(postgresql_url: str) -> Iterator[Engine]:
    engine = create_engine(postgresql_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pooled(direct: Engine, pgbouncer: PgBouncer) -> Iterator[Doubt]:
    with doubt_over(direct, through=pgbouncer.url()) as doubt:
        resolve_in_doubt(doubt.proxied)
        yield doubt


def test_thirty_cut_commits_through_pgbouncer_answer_the_truth(
    pooled: Doubt, pgbouncer: PgBouncer, direct: Engine
) -> None:
    middleware = SessionMiddleware(pooled.app, pooled.db)

    trial = pooled.trial(middleware, "via PgBouncer (transaction mode), resolve_in_doubt, no key")

    assert (trial.false_failures, trial.false_successes) == (0, 0)
    assert trial.statuses == [201] * 30
    assert_nothing_left_open(pgbouncer, direct)


def test_commit_cut_before_pgbouncer_got_it_answers_500_resolved_as_not_committed(
    pooled: Doubt, pgbouncer: PgBouncer, direct: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")

    tag, seen = pooled.post(SessionMiddleware(pooled.app, pooled.db), forward=False)

    assert seen.client_status.startswith("500")
    assert pooled.copies(tag) == 0
    logged = messages(caplog)
    assert any("resolved: not committed" in m and "'aborted'" in m for m in logged), logged
    assert_nothing_left_open(pgbouncer, direct)
