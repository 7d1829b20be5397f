"""The application ``python -m bench --replicas`` serves: 90 % reads, 10 % writes.

``GET /items/<id>`` reads one row; the same SELECT also asks the server its
port, so the response says who served it (``X-Served-By: primary|replica``)
at no extra round trip. ``POST /items`` inserts a row. Built from
``PRIMARY_URL`` and ``REPLICA_URLS`` (space-separated; empty means the
primary alone, a middleware without ``replicas``).
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import String, create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from wsgi_sqla import Replicas, SessionMiddleware

ROWS = 1000


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_replica_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def seed(url: str) -> None:
    """A fresh table with ``ROWS`` rows, on the primary."""
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(Item), [{"name": f"item {i}"} for i in range(ROWS)])
    engine.dispose()


def build(primary_url: str, replica_urls: list[str]) -> Any:
    primary = create_engine(primary_url)
    db: scoped_session[Any] = scoped_session(sessionmaker(bind=primary))
    primary_port = make_url(primary_url).port
    port_sql = "inet_server_port()" if primary.dialect.name == "postgresql" else "@@port"
    read = text(f"SELECT name, {port_sql} FROM bench_replica_items WHERE id = :id")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/nodb":
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        if environ["REQUEST_METHOD"] == "POST":
            db.execute(insert(Item).values(name="new"))
            start_response("201 Created", [("Content-Length", "0")])
            return [b""]
        item_id = int(environ["PATH_INFO"].rsplit("/", 1)[1])
        name, port = db.execute(read, {"id": item_id}).one()
        body = str(name).encode()
        served = "primary" if int(port) == primary_port else "replica"
        start_response("200 OK", [("Content-Length", str(len(body))), ("X-Served-By", served)])
        return [body]

    if not replica_urls:
        return SessionMiddleware(app, db)
    replicas = [create_engine(url) for url in replica_urls]
    return SessionMiddleware(app, db, replicas=Replicas({db: replicas}))


if os.environ.get("PRIMARY_URL"):
    application = build(os.environ["PRIMARY_URL"], os.environ.get("REPLICA_URLS", "").split())
