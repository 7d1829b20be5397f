"""The same small JSON API on Bottle: every request is one unit of work.

Run it on its embedded SQLite file::

    gunicorn examples.bottle_app:app

or on any database SQLAlchemy speaks, with ``DATABASE_URL`` set (see models.py). ``app`` is
the wrapped WSGI application; ``bottle_app`` is the Bottle object.
"""

from __future__ import annotations

import json

import bottle
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from wsgi_sqla import Retry, SessionMiddleware, report_bottle_exceptions

from .models import User, db

bottle_app = bottle.Bottle()


def _name() -> str:
    body = (
        bottle.request.json if bottle.request.content_type.startswith("application/json") else None
    )
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        bottle.abort(400, 'expected a JSON body {"name": "<non-empty string>"}')
    return name


def _user(user_id: int) -> User:
    user = User.get(user_id)
    if user is None:
        bottle.abort(404, f"no user {user_id}")
    return user


@bottle_app.get("/users")
def list_users() -> str:
    # Bottle turns only dicts into JSON; the list is the same answer as the Flask example's.
    bottle.response.content_type = "application/json"
    return json.dumps([user.to_json() for user in db.scalars(select(User).order_by(User.id))])


@bottle_app.post("/users")
def create_user() -> dict[str, object]:
    try:
        user = User(name=_name()).save()
    except IntegrityError:
        bottle.response.status = 409
        return {"error": "a user with that name exists"}
    bottle.response.status = 201
    return user.to_json()


@bottle_app.get("/users/<user_id:int>")
def get_user(user_id: int) -> dict[str, object]:
    return _user(user_id).to_json()


@bottle_app.route("/users/<user_id:int>", method="PATCH")
def rename_user(user_id: int) -> dict[str, object]:
    user = _user(user_id)
    try:
        user.update(name=_name())
    except IntegrityError:
        bottle.response.status = 409
        return {"error": "a user with that name exists"}
    return user.to_json()


@bottle_app.delete("/users/<user_id:int>")
def delete_user(user_id: int) -> str:
    _user(user_id).delete()
    bottle.response.status = 204
    return ""


@bottle_app.post("/users/<user_id:int>/fail")
def rename_then_fail(user_id: int) -> str:
    """Writes, then raises: the 500 rolls the write back."""
    _user(user_id).update(name="renamed by a request that failed")
    raise RuntimeError("this view fails after writing; nothing it wrote is kept")


# A deadlock or serialization failure runs the request again (up to 3 times);
# Bottle turns route exceptions into 500s, so it hands them to the middleware first.
report_bottle_exceptions(bottle_app)
app = SessionMiddleware(bottle_app, db, retry=Retry(3))
