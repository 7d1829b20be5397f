"""Orders behind Idempotency-Key, served by real servers: ``idempotency_app:application``.

``POST /orders`` notes that its view ran (a line with the worker's pid in
``RUNS_FILE``, outside the database), sleeps ``X-Sleep`` seconds (default
0.5, so duplicates arrive while it runs), inserts one order (the body is its
item) and answers 201 with the order as JSON.

``DATABASE_URL`` says where the database is, ``LEASE`` the keys' lease in
seconds (default 60), ``KEYS=0`` turns the keys off (the control),
``DATABASE_POOLING=transaction`` that the URL points at
a transaction-pooling PgBouncer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import IdempotencyKeys, SessionMiddleware

engine, db = served_database()
keys = IdempotencyKeys(lease=float(os.environ.get("LEASE", "60")))
RUNS_FILE = os.environ.get("RUNS_FILE", os.devnull)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "idempotent_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(80))


def orders(environ: Any, start_response: Any) -> Iterable[bytes]:
    with open(RUNS_FILE, "a") as runs:
        runs.write(f"{os.getpid()}\n")
    time.sleep(float(environ.get("HTTP_X_SLEEP", "0.5")))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    order = Order(item=environ["wsgi.input"].read(length).decode())
    db.add(order)
    db.flush()
    body = json.dumps({"id": order.id, "item": order.item}).encode()
    start_response(
        "201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


application = SessionMiddleware(
    orders, db, idempotency=None if os.environ.get("KEYS") == "0" else keys
)
