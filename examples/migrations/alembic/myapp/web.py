"""The WSGI application: every request one unit of work, POSTs keyed for retries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wsgi_sqla import IdempotencyKeys, SessionMiddleware

from .models import User, db

#: The idempotency keys' table lives on ``keys.metadata``; env.py hands it to Alembic.
keys = IdempotencyKeys()


def users(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        User(name=environ["wsgi.input"].read().decode()).save()
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"created"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(db.query(User).count()).encode()]


app = SessionMiddleware(users, db, idempotency=keys)
