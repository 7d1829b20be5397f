"""A keyed request whose COMMIT is cut: its Idempotency-Key record settles the doubt.

The key's record is written in the request's own transaction, so it is
committed if and only if the work is, on PostgreSQL and MariaDB alike (no
:func:`wsgi_sqla.resolve_in_doubt` here). When the COMMIT loses its
connection, the unit looks the record up on a fresh connection: found, the
client gets the application's response; not found, an error (or a retry
with ``Retry``), and the key is free for the client's own retry. The
application reaches the database through a :class:`CommitCuttingProxy`; the
test reads it directly.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from wsgi_sqla import IdempotencyKeys, Retry, SessionMiddleware

from .doubt import Doubt, messages

pytestmark = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)


@pytest.fixture
def keys(doubt: Doubt) -> Iterator[IdempotencyKeys]:
    """Default keys, their table fresh on the database under test."""
    made = IdempotencyKeys()
    made.table.drop(doubt.direct, checkfirst=True)
    made.table.create(doubt.direct)
    yield made
    made.table.drop(doubt.direct, checkfirst=True)


def test_keyed_commit_cut_after_the_server_got_it_answers_the_response_replayed_later(
    doubt: Doubt, keys: IdempotencyKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_sqla")
    middleware = SessionMiddleware(doubt.app, doubt.db, idempotency=keys)
    key = uuid.uuid4().hex

    tag, seen = doubt.post(middleware, key=key)
    repeat = doubt.again(middleware, tag, key)

    assert seen.client_status == "201 Created"
    assert seen.body == tag.encode()
    assert (repeat.status, repeat.body) == ("201 Created", tag.encode())
    assert ("Idempotent-Replayed", "true") in repeat.headers
    assert doubt.calls == [tag]
    assert doubt.copies(tag) == 1
    logged = messages(caplog, logging.WARNING)
    assert any("resolved: committed" in m and "Idempotency-Key" in m for m in logged), logged


def test_keyed_commit_cut_before_the_server_got_it_answers_500_and_frees_the_key(
    doubt: Doubt, keys: IdempotencyKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    middleware = SessionMiddleware(doubt.app, doubt.db, idempotency=keys)
    key = uuid.uuid4().hex

    tag, seen = doubt.post(middleware, key=key, forward=False)
    retried = doubt.again(middleware, tag, key)

    assert seen.client_status.startswith("500")
    logged = messages(caplog)
    assert any("resolved: not committed" in m and "not found" in m for m in logged), logged
    assert retried.status == "201 Created", "the client's retry with the same key runs"
    assert doubt.calls == [tag, tag]
    assert doubt.copies(tag) == 1


def test_keyed_commit_resolved_as_not_committed_is_run_again_under_retry(
    doubt: Doubt, keys: IdempotencyKeys
) -> None:
    never_transient = Retry(1, when=lambda exc: False)
    middleware = SessionMiddleware(doubt.app, doubt.db, idempotency=keys, retry=never_transient)

    tag, seen = doubt.post(middleware, key=uuid.uuid4().hex, forward=False)

    assert seen.client_status == "201 Created"
    assert doubt.calls == [tag, tag]
    assert doubt.copies(tag) == 1


def test_keyed_commit_whose_record_cannot_be_looked_up_answers_500_outcome_unknown(
    doubt: Doubt, keys: IdempotencyKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    middleware = SessionMiddleware(doubt.app, doubt.db, idempotency=keys)

    tag, seen = doubt.post(middleware, key=uuid.uuid4().hex, then_refuse=True)

    assert seen.client_status.startswith("500")
    assert doubt.copies(tag) == 1, "the server got the COMMIT"
    logged = messages(caplog)
    assert any("the outcome is unknown" in m and "lookup raised" in m for m in logged), logged


def test_thirty_keyed_cut_commits_answer_the_truth(doubt: Doubt, keys: IdempotencyKeys) -> None:
    middleware = SessionMiddleware(doubt.app, doubt.db, idempotency=keys)

    trial = doubt.trial(middleware, "Idempotency-Key", keyed=True)

    assert doubt.proxy.cuts == 30
    assert (trial.false_failures, trial.false_successes) == (0, 0)
    assert trial.statuses == [201] * 30
