"""The in-doubt COMMIT tests' application, for a real gunicorn.

``POST /?<tag>`` inserts one row with that tag into ``wsgi_sqla_in_doubt``
(the test creates the table, and the keys' table) and answers 201 with the
tag. ``DATABASE_URL`` is the COMMIT-cutting proxy in front of the database;
``RESOLVE_IN_DOUBT=1`` puts :func:`wsgi_sqla.resolve_in_doubt` on the engine
(PostgreSQL). Requests with an ``Idempotency-Key`` are keyed
(``IdempotencyKeys()``); the others run as usual. Serve ``in_doubt_app:app``.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import text

from harness.apps import served_database
from wsgi_sqla import IdempotencyKeys, SessionMiddleware, resolve_in_doubt

engine, db = served_database()
if os.environ.get("RESOLVE_IN_DOUBT") == "1":
    resolve_in_doubt(engine)
keys = IdempotencyKeys()


def tagged(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    tag = environ["QUERY_STRING"]
    db.execute(text("INSERT INTO wsgi_sqla_in_doubt (tag) VALUES (:tag)"), {"tag": tag})
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [tag.encode()]


app = SessionMiddleware(tagged, db, idempotency=keys)
