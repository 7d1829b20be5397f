"""A COMMIT in doubt: the server committed, the client never heard back.

The application reaches its database through a :class:`CommitCuttingProxy`,
which forwards the COMMIT, lets the server answer it and hangs up before
the answer reaches the client. The row is committed, yet the commit raised
a lost-connection error that proves nothing about the outcome. The unit of
work must say so (:class:`wsgi_sqla.CommitInDoubtError`, a log that calls the
outcome unknown) and must never run the work again. The database is read
through the test's own direct connection, never through the proxy.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import Exchange, make_engine, serve

import wsgi_sqla
from wsgi_sqla import Retry, SessionMiddleware, transaction

from .support import CommitCuttingProxy

pytestmark = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)

metadata = MetaData()
# No unique key on the tag: work done twice shows as two rows.
rows = Table(
    "wsgi_sqla_in_doubt",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tag", String(40), nullable=False),
)


@dataclass
class Doubt:
    """The proxied application side, and the test's direct view of the database."""

    proxy: CommitCuttingProxy
    direct: Engine
    db: scoped_session[Session]
    calls: list[str] = field(default_factory=list)

    def copies(self, tag: str) -> int:
        """Committed rows with ``tag``, read through a direct connection."""
        with self.direct.connect() as connection:
            query = select(func.count()).select_from(rows).where(rows.c.tag == tag)
            return int(connection.execute(query).scalar_one())

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """Inserts the row named by the query string, answers 201."""
        tag = environ["QUERY_STRING"]
        self.calls.append(tag)
        self.db.execute(insert(rows).values(tag=tag))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [tag.encode()]

    def post(self, middleware: Any) -> tuple[str, Exchange]:
        """One POST through ``middleware`` with its COMMIT cut; (its tag, what was seen)."""
        tag = uuid.uuid4().hex
        self.proxy.arm()
        seen = serve(middleware, method="POST", environ={"QUERY_STRING": tag})
        assert self.proxy.armed == 0, "the request never sent a COMMIT"
        return tag, seen


@pytest.fixture
def doubt(engine: Engine) -> Iterator[Doubt]:
    metadata.drop_all(engine)
    metadata.create_all(engine)
    url = engine.url
    proxy = CommitCuttingProxy(url.host or "127.0.0.1", url.port or 0, engine.dialect.name)
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    if engine.dialect.name == "postgresql":
        proxied = proxied.update_query_dict({"sslmode": "disable"})  # the proxy reads the stream
    app_engine = make_engine(proxied.render_as_string(hide_password=False))
    db: scoped_session[Session] = scoped_session(sessionmaker(bind=app_engine))
    try:
        yield Doubt(proxy, engine, db)
    finally:
        db.remove()
        proxy.stop()
        app_engine.dispose()
        metadata.drop_all(engine)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages of the ERROR records of the "wsgi_sqla" logger."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "wsgi_sqla" and r.levelno >= logging.ERROR
    ]


def test_request_whose_commit_is_cut_answers_500_logs_unknown_and_keeps_the_row(
    doubt: Doubt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")

    tag, seen = doubt.post(SessionMiddleware(doubt.app, doubt.db))

    assert seen.client_status.startswith("500")
    assert doubt.copies(tag) == 1, "the server got the COMMIT: the row is committed"
    logged = errors(caplog)
    assert any("unknown" in message for message in logged), logged
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
        logged = errors(caplog)
        in_doubt_logs += any("unknown" in m for m in logged) and not any(
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
