"""Helpers of the Idempotency-Key tests: an orders application and keyed requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import (
    Column,
    CursorResult,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
)
from sqlalchemy.orm import scoped_session
from support import Exchange, serve

from wsgi_sqla import after_commit

__all__ = ["Orders", "keyed", "problem_of", "stored_rows"]


class Orders:
    """``POST /orders`` inserts one order (the body is its item) and answers 201 with its id.

    ``runs`` counts the executions of the view; ``hooks`` its after-commit
    hooks that ran. ``before`` is called at the start of each run,
    ``status`` is the status it answers (201 unless changed) and ``fail``
    an exception it raises after inserting.
    """

    def __init__(self, session: scoped_session[Any]) -> None:
        self.session = session
        self.metadata = MetaData()
        self.table = Table(
            "wsgi_sqla_orders",
            self.metadata,
            Column("id", Integer, primary_key=True),
            Column("item", String(80), nullable=False),
        )
        self.runs = 0
        self.hooks = 0
        self.status = "201 Created"
        self.fail: BaseException | None = None
        self.before: Callable[[], object] = lambda: None
        self.body_size = 0

    def app(self, environ: Any, start_response: Any) -> list[bytes]:
        self.runs += 1
        self.before()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        item = environ["wsgi.input"].read(length).decode() or "thing"
        inserted = cast(
            "CursorResult[Any]", self.session.execute(insert(self.table).values(item=item))
        )
        key = inserted.inserted_primary_key
        assert key is not None
        order_id = key[0]
        after_commit(self._hooked)
        if self.fail is not None:
            raise self.fail
        body = json.dumps({"id": order_id, "item": item, "run": self.runs}).encode()
        body += b" " * self.body_size
        start_response(
            self.status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Location", f"/orders/{order_id}"),
            ],
        )
        return [body]

    def _hooked(self) -> None:
        self.hooks += 1

    def count(self, engine: Engine) -> int:
        """Orders committed, read through a connection of its own."""
        with engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(self.table)).scalar_one()
            )


def keyed(
    app: Any,
    key: str | None = '"8e03978e"',
    *,
    body: bytes = b"book",
    method: str = "POST",
    path: str = "/orders",
    environ: dict[str, Any] | None = None,
) -> Exchange:
    """One request to ``app`` with ``Idempotency-Key: key`` (none when ``key`` is ``None``)."""
    extra: dict[str, Any] = {"CONTENT_TYPE": "text/plain"}
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    extra.update(environ or {})
    return serve(app, body=body, method=method, path=path, environ=extra)


def problem_of(exchange: Exchange) -> dict[str, Any]:
    """The RFC 9457 problem a response carries, checked to be one."""
    assert dict(exchange.headers)["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(exchange.body)
    assert problem["status"] == int(str(exchange.status)[:3])
    assert problem["title"] and problem["detail"]
    return problem


def stored_rows(engine: Engine, table: Table) -> list[Any]:
    """The keys' rows, read through a connection of its own."""
    with engine.connect() as connection:
        return list(connection.execute(select(table)))
