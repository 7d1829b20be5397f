"""Flask-SQLAlchemy's flaskr example (tests/flask/vendored_flaskr) as gunicorn serves it.

``FLASKR_DIR`` names the directory holding the ``flaskr`` package: the
vendored one, or a copy with its views' commits removed. One route is added
for the checks, since flaskr has no view that fails after writing, and one
that inserts without flaskr's "already registered" check, so that the unique
constraint refuses the duplicate; a request with ``X-Fail-After-View`` fails
after flaskr's own view has run (and, as written, committed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["FLASKR_DIR"])

from flask import Response, abort, request
from flaskr import create_app, db  # type: ignore[import-not-found]
from flaskr.auth.models import User  # type: ignore[import-not-found]
from sqlalchemy.exc import IntegrityError

app = create_app()
assert Path(sys.modules["flaskr"].__file__ or "").is_relative_to(os.environ["FLASKR_DIR"])


@app.post("/harness/raise-after-write")
def raise_after_write() -> str:
    """Write a user, flush it, then fail as a view's bug would."""
    db.session.add(User(username=request.form["username"], password="secret"))
    db.session.flush()
    raise RuntimeError("the view failed after writing")


@app.post("/harness/register-unchecked")
def register_unchecked() -> tuple[str, int]:
    """Insert a user as is: a taken name is refused by the unique constraint, with a 409."""
    db.session.add(User(username=request.form["username"], password="secret"))
    try:
        db.session.flush()
    except IntegrityError:
        abort(409)
    return "", 201


@app.after_request
def fail_after_view(response: Response) -> Response:
    """Fail after the view, as a broken after_request hook would, when the request asks."""
    if "X-Fail-After-View" in request.headers:
        raise RuntimeError("failed after the view")
    return response
