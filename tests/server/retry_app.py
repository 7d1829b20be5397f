"""A ledger that only SERIALIZABLE isolation keeps right, on Flask and on Bottle.

``POST /entries`` with ``{"request": "<id>"}`` counts the entries and
appends one numbered ``count + 1``. Run serially, the numbers are 1, 2, 3,
... with no gap and no repeat. Run concurrently under SERIALIZABLE,
PostgreSQL aborts the transactions that would break that
(SQLSTATE 40001), the view raises, the framework turns the error into a
500, and the hook installed below hands the error to
:class:`~wsgi_sqla.SessionMiddleware`, which runs the request again.

``DATABASE_URL`` says where the database is, ``RETRIES`` how many retries
the middleware makes (0 shows what happens without them);
``DATABASE_POOLING=transaction`` says the URL points at a transaction-pooling
PgBouncer (as in the examples). Serve
``retry_app:flask_app`` or ``retry_app:bottle_wsgi``.
"""

from __future__ import annotations

import os
from typing import Any

import bottle
import flask
import flask.typing
from sqlalchemy import String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import (
    Retry,
    SessionMiddleware,
    report_bottle_exceptions,
    report_flask_exceptions,
)

RETRIES = int(os.environ.get("RETRIES", "20"))
engine, db = served_database(isolation_level="SERIALIZABLE")


class Base(DeclarativeBase):
    pass


class Entry(Base):
    __tablename__ = "retry_ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int]  # deliberately not unique: SERIALIZABLE alone must keep it right
    request: Mapped[str] = mapped_column(String(64), unique=True)


def append(request_id: str) -> int:
    number = db.scalar(select(func.count()).select_from(Entry)) + 1  # type: ignore[operator]
    db.execute(text("SELECT pg_sleep(0.005)"))  # widen the window in which requests overlap
    db.add(Entry(number=number, request=request_id))
    db.flush()
    return number


flask_app = flask.Flask(__name__)


@flask_app.post("/entries")
def flask_entry() -> flask.typing.ResponseReturnValue:
    return {"number": append(flask.request.get_json()["request"])}, 201


report_flask_exceptions(flask_app)
flask_app.wsgi_app = SessionMiddleware(flask_app.wsgi_app, db, retry=Retry(RETRIES))  # type: ignore[method-assign]

bottle_app = bottle.Bottle()


@bottle_app.post("/entries")
def bottle_entry() -> dict[str, int]:
    bottle.response.status = 201
    payload: Any = bottle.request.json
    return {"number": append(payload["request"])}


report_bottle_exceptions(bottle_app)
bottle_wsgi = SessionMiddleware(bottle_app, db, retry=Retry(RETRIES))
