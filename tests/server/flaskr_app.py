"""Flask-SQLAlchemy's flaskr example (tests/flask/vendored_flaskr) as gunicorn serves it.

``FLASKR_DIR`` names the directory holding the ``flaskr`` package: the
vendored one, or a copy with its views' commits removed. One route is added
for the checks, since flaskr has no view that fails after writing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["FLASKR_DIR"])

from flask import request
from flaskr import create_app, db  # type: ignore[import-not-found]
from flaskr.auth.models import User  # type: ignore[import-not-found]

app = create_app()
assert Path(sys.modules["flaskr"].__file__ or "").is_relative_to(os.environ["FLASKR_DIR"])


@app.post("/harness/raise-after-write")
def raise_after_write() -> str:
    """Write a user, flush it, then fail as a view's bug would."""
    db.session.add(User(username=request.form["username"], password="secret"))
    db.session.flush()
    raise RuntimeError("the view failed after writing")
