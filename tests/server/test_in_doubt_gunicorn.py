"""Cut COMMITs under a real gunicorn: the clients are told the truth over HTTP.

A gunicorn worker serves tests/server/in_doubt_app.py and reaches the
database through the test's :class:`CommitCuttingProxy`, which cuts the
connection right after forwarding each request's COMMIT. With
:func:`wsgi_sqla.resolve_in_doubt` (PostgreSQL, no key) or an
``Idempotency-Key`` (PostgreSQL and MariaDB), every one of 30 requests
answers 201 over HTTP and its row is committed: no false failure, no false
success. The database is read through the test's own direct connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from wsgi_sqla import IdempotencyKeys

from .doubt import Doubt, Trial
from .support import Serve

CASES = [
    pytest.param("postgresql", False, id="postgresql-resolve_in_doubt"),
    pytest.param("postgresql", True, id="postgresql-keyed"),
    pytest.param("mariadb", True, id="mariadb-keyed"),
]


@pytest.fixture
def keys_table(doubt: Doubt) -> Iterator[None]:
    table = IdempotencyKeys().table
    table.drop(doubt.direct, checkfirst=True)
    table.create(doubt.direct)
    yield
    table.drop(doubt.direct, checkfirst=True)


@pytest.mark.parametrize(("db_name", "keyed"), CASES, indirect=["db_name"])
def test_thirty_cut_commits_on_gunicorn_answer_the_truth(
    doubt: Doubt, keys_table: None, gunicorn: Serve, keyed: bool
) -> None:
    server = gunicorn(
        "in_doubt_app:app",
        database=doubt.proxied.url.render_as_string(hide_password=False),
        env={"RESOLVE_IN_DOUBT": "0" if keyed else "1"},
    )
    trial = Trial()
    for _ in range(30):
        tag = uuid.uuid4().hex
        headers = {"Idempotency-Key": f'"{tag}"'} if keyed else {}
        doubt.proxy.arm(after=1 if keyed else 0)
        reply = server.request("POST", f"/?{tag}", b"", headers)
        assert doubt.proxy.armed == 0, "the request never sent a COMMIT"
        trial.count(reply.status, doubt.copies(tag) == 1)
    print(
        f"\n{doubt.direct.dialect.name}, gunicorn, {'keyed' if keyed else 'resolve_in_doubt'}: "
        f"30 COMMITs cut after forwarding: {trial}"
    )

    assert (trial.false_failures, trial.false_successes) == (0, 0)
    assert trial.statuses == [201] * 30
