"""An application whose view swallows a database error, served by gunicorn.

Plain WSGI under :class:`~wsgi_sqla.SessionMiddleware`. Both writing views
insert the row ``K`` (the ``key`` query parameter), then insert ``K`` again,
which the unique key rejects, catch the ``IntegrityError`` and answer 201:

=====================  ============================================================
``POST /swallow``      the duplicate outside a savepoint: the database rejected
                       a statement of the unit of work (on PostgreSQL the whole
                       transaction is aborted), so the unit must not commit
``POST /savepoint``    the duplicate inside ``with db.begin_nested():``, the
                       idiom that undoes only the failed statement: ``K`` stays
=====================  ============================================================

``DATABASE_URL`` says where the database is. Tables are created by the test
(:func:`~tests.server.support.app_tables`), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import String, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import SessionMiddleware

engine, db = served_database()


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "swallow_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    tag: Mapped[str] = mapped_column(String(80), unique=True)


def swallow(key: str) -> None:
    db.execute(insert(Item).values(tag=key))
    try:  # noqa: SIM105 - spelled as the views this guards against are
        db.execute(insert(Item).values(tag=key))
    except IntegrityError:
        pass


def savepoint(key: str) -> None:
    db.execute(insert(Item).values(tag=key))
    try:
        with db.begin_nested():
            db.execute(insert(Item).values(tag=key))
    except IntegrityError:
        pass


VIEWS: dict[str, Callable[[str], None]] = {"/swallow": swallow, "/savepoint": savepoint}


def views(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    key = parse_qs(environ.get("QUERY_STRING", ""))["key"][0]
    VIEWS[environ["PATH_INFO"]](key)
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [key.encode()]


app = SessionMiddleware(views, db)
