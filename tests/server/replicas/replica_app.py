"""The application the replica tests serve, in-process and under gunicorn.

``make_app(primary_url, replica_urls, **replica_options)`` builds a bare
WSGI application over one scoped session, wrapped by SessionMiddleware with
``replicas=Replicas({db: replicas}, **replica_options)``. Its views report
which server answered by asking the server itself (its port, and whether it
is a replica: ``pg_is_in_recovery()`` / ``@@read_only``), never by trusting
the router. Under gunicorn the module builds ``app`` from ``PRIMARY_URL``
and ``REPLICA_URLS`` (space-separated).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import Engine, String, create_engine, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

import wsgi_sqla
from wsgi_sqla import Replicas, Retry, SessionMiddleware


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "replica_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


@dataclass
class App:
    wsgi: Any
    db: scoped_session[Any]
    primary: Engine
    replicas: list[Engine]
    middleware: SessionMiddleware
    #: the middleware's Replicas, for the blocks and tasks that share it
    config: Replicas


def where_am_i(db: scoped_session[Any]) -> dict[str, Any]:
    if db.get_bind().dialect.name == "postgresql":
        row = db.execute(text("SELECT inet_server_port(), pg_is_in_recovery()")).one()
    else:
        row = db.execute(text("SELECT @@port, @@read_only = 1")).one()
    return {"port": int(row[0]), "replica": bool(row[1])}


class CommitRefused(Exception):
    """Raised by ``/fail-commit``'s session while it commits."""


def refuse_commit(session: Any) -> None:
    raise CommitRefused("the commit of /fail-commit fails")


def make_app(primary_url: str, replica_urls: list[str], retries: int = 0, **options: Any) -> App:
    primary = create_engine(primary_url, pool_size=5)
    replicas = [create_engine(url, pool_size=5) for url in replica_urls]
    db: scoped_session[Any] = scoped_session(sessionmaker(bind=primary))

    def reply(start_response: Any, status: str, payload: object) -> list[bytes]:
        body = json.dumps(payload).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    def app(environ: Any, start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        method = environ["REQUEST_METHOD"]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if path == "/nothing":
            return reply(start_response, "200 OK", {})
        if path == "/pid":
            return reply(start_response, "200 OK", {"pid": os.getpid()})
        if query.get("primary"):
            wsgi_sqla.use_primary()
        if path == "/where":
            return reply(start_response, "200 OK", where_am_i(db))
        if path == "/items" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            name = environ["wsgi.input"].read(length).decode() or "item"
            item = Item(name=name)
            db.add(item)
            db.flush()
            return reply(start_response, "201 Created", {"id": item.id, **where_am_i(db)})
        if path == "/items" and method == "GET" and query.get("write"):
            # A GET that writes: on a replica this must fail loudly.
            item = Item(name=query["write"][0])
            db.add(item)
            db.flush()
            return reply(start_response, "201 Created", {"id": item.id, **where_am_i(db)})
        if path.startswith("/items/"):
            item_id = int(path.rsplit("/", 1)[1])
            found = db.scalar(select(Item).where(Item.id == item_id))
            where = where_am_i(db)
            if found is None:
                return reply(start_response, "404 Not Found", where)
            return reply(start_response, "200 OK", {"id": found.id, **where})
        if path == "/fail-commit" and method == "POST":
            # The write is flushed, then the commit itself fails.
            db.add(Item(name="never committed"))
            db.flush()
            event.listen(db(), "before_commit", refuse_commit, once=True)
            return reply(start_response, "201 Created", where_am_i(db))
        if path == "/fail" and method == "POST":
            db.add(Item(name="rolled back"))
            db.flush()
            return reply(start_response, "409 Conflict", {})
        return reply(start_response, "404 Not Found", {})

    config = Replicas({db: replicas}, **options)
    retry = Retry(retries) if retries else None
    middleware = SessionMiddleware(app, db, replicas=config, retry=retry)
    return App(middleware, db, primary, replicas, middleware, config)


if os.environ.get("PRIMARY_URL"):
    _built = make_app(
        os.environ["PRIMARY_URL"],
        os.environ["REPLICA_URLS"].split(),
        backoff=float(os.environ.get("REPLICA_BACKOFF", "5")),
        max_lag=float(os.environ.get("REPLICA_MAX_LAG", "30")),
    )
    app = _built.wsgi
