"""The proxied application side of the in-doubt COMMIT tests, and their direct view.

The application reaches its database through a :class:`CommitCuttingProxy`;
the test reads the database through its own direct engine, never through
the proxy or the session under test.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, make_url, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import Exchange, make_engine, serve, tagged_rows

from wsgi_sqla import transaction_pooled

from .support import CommitCuttingProxy

rows = tagged_rows
metadata = rows.metadata


@dataclass
class Doubt:
    """The proxied application side, and the test's direct view of the database."""

    proxy: CommitCuttingProxy
    direct: Engine
    #: The application's engine, through the proxy.
    proxied: Engine
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

    def post(
        self,
        middleware: Any,
        *,
        forward: bool = True,
        key: str | None = None,
        then_refuse: bool = False,
    ) -> tuple[str, Exchange]:
        """One POST through ``middleware`` with its COMMIT cut; (its tag, what was seen).

        The cut comes after the COMMIT reached the server, or before
        (``forward=False``). With ``key``, the POST has that Idempotency-Key
        (and the COMMIT of its claim, which comes first, is not cut). With
        ``then_refuse``, the database is unreachable after the cut.
        """
        tag = uuid.uuid4().hex
        environ = {"QUERY_STRING": tag}
        if key is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = f'"{key}"'
        self.proxy.arm(forward=forward, after=0 if key is None else 1, then_refuse=then_refuse)
        seen = serve(middleware, method="POST", environ=environ)
        assert self.proxy.armed == 0, "the request never sent a COMMIT"
        return tag, seen

    def again(self, middleware: Any, tag: str, key: str) -> Exchange:
        """The same keyed POST once more, nothing cut (the client's own retry)."""
        environ = {"QUERY_STRING": tag, "HTTP_IDEMPOTENCY_KEY": f'"{key}"'}
        return serve(middleware, method="POST", environ=environ)

    def trial(self, middleware: Any, what: str, *, keyed: bool = False) -> Trial:
        """30 POSTs with their COMMIT cut after forwarding: what the clients were told."""
        trial = Trial()
        for _ in range(30):
            tag, seen = self.post(middleware, key=uuid.uuid4().hex if keyed else None)
            trial.count(int(seen.client_status[:3]), self.copies(tag) == 1)
        print(f"\n{self.direct.dialect.name}, {what}: 30 COMMITs cut after forwarding: {trial}")
        return trial


@dataclass
class Trial:
    """What 30 clients were told, against what the database holds."""

    false_failures: int = 0
    false_successes: int = 0
    statuses: list[int] = field(default_factory=list)

    def count(self, status: int, committed: bool) -> None:
        """One client told ``status``, its row ``committed`` or not."""
        self.statuses.append(status)
        self.false_failures += status >= 500 and committed
        self.false_successes += 200 <= status < 300 and not committed

    def __str__(self) -> str:
        return (
            f"{self.false_failures} false failures (>= 500, row committed), "
            f"{self.false_successes} false successes (2xx, row missing), "
            f"statuses {sorted(set(self.statuses))}"
        )


@contextmanager
def doubt_over(engine: Engine, through: str | None = None) -> Iterator[Doubt]:
    """A :class:`Doubt` whose application reaches ``engine``'s database through the proxy.

    ``through``: the URL of a transaction-pooling PgBouncer in front of that
    database, which the proxy then forwards to (the application's engine is
    made :func:`~wsgi_sqla.transaction_pooled`).
    """
    metadata.drop_all(engine)
    metadata.create_all(engine)
    url = engine.url if through is None else make_url(through)
    proxy = CommitCuttingProxy(url.host or "127.0.0.1", url.port or 0, engine.dialect.name)
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    if engine.dialect.name == "postgresql":
        proxied = proxied.update_query_dict({"sslmode": "disable"})  # the proxy reads the stream
    app_engine = make_engine(proxied.render_as_string(hide_password=False))
    if through is not None:
        transaction_pooled(app_engine)
    db: scoped_session[Session] = scoped_session(sessionmaker(bind=app_engine))
    try:
        yield Doubt(proxy, engine, app_engine, db)
    finally:
        db.remove()
        proxy.stop()
        app_engine.dispose()
        metadata.drop_all(engine)


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    """The messages of the "wsgi_sqla" logger's records at ``level`` and above."""
    return [r.getMessage() for r in caplog.records if r.name == "wsgi_sqla" and r.levelno >= level]
