"""A small JSON API on Flask where every request is one unit of work.

Run it on its embedded SQLite file::

    gunicorn examples.flask_app:app

or on any database SQLAlchemy speaks, e.g.::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test gunicorn examples.flask_app:app

No view commits: ``SessionMiddleware`` commits when the status is below 400
and rolls back otherwise, so ``POST /users/<id>/fail`` (which writes, then
raises) and ``POST /users`` with a duplicate name (409) leave nothing behind.

A POST or PATCH with an ``Idempotency-Key`` header runs once per client and
key: a client that lost the answer sends the same request with the same key
again and gets the first answer replayed (docs/exactly-once.rst).

Outside requests, ``transaction()`` gives a CLI command the same rules::

    flask --app examples.flask_app add-users ann bob
"""

from __future__ import annotations

import click
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from wsgi_sqla import (
    IdempotencyKeys,
    Retry,
    SessionMiddleware,
    report_flask_exceptions,
    transaction,
)

from .models import User, create_tables, db

app = Flask(__name__)


def _name() -> str:
    name = (request.get_json(silent=True) or {}).get("name")
    if not isinstance(name, str) or not name.strip():
        abort(400, description='expected a JSON body {"name": "<non-empty string>"}')
    return name


@app.get("/users")
def list_users() -> ResponseReturnValue:
    users = db.scalars(select(User).order_by(User.id))
    return jsonify([user.to_json() for user in users])


@app.post("/users")
def create_user() -> ResponseReturnValue:
    try:
        user = User(name=_name()).save()
    except IntegrityError:
        return jsonify(error="a user with that name exists"), 409
    return jsonify(user.to_json()), 201


@app.get("/users/<int:user_id>")
def get_user(user_id: int) -> ResponseReturnValue:
    user = User.get(user_id) or abort(404)
    return jsonify(user.to_json())


@app.patch("/users/<int:user_id>")
def rename_user(user_id: int) -> ResponseReturnValue:
    user = User.get(user_id) or abort(404)
    try:
        user.update(name=_name())
    except IntegrityError:
        return jsonify(error="a user with that name exists"), 409
    return jsonify(user.to_json())


@app.delete("/users/<int:user_id>")
def delete_user(user_id: int) -> ResponseReturnValue:
    (User.get(user_id) or abort(404)).delete()
    return "", 204


@app.post("/users/<int:user_id>/fail")
def rename_then_fail(user_id: int) -> ResponseReturnValue:
    """Writes, then raises: the 500 rolls the write back."""
    (User.get(user_id) or abort(404)).update(name="renamed by a request that failed")
    raise RuntimeError("this view fails after writing; nothing it wrote is kept")


@app.cli.command("add-users")
@click.argument("names", nargs=-1, required=True)
def add_users(names: tuple[str, ...]) -> None:
    """Add users by name: all of them, or none if one name is taken."""
    with transaction(db):
        for name in names:
            try:
                User(name=name).save()
            except IntegrityError:
                raise click.ClickException(
                    f"a user named {name!r} exists; nothing was added"
                ) from None
    click.echo(f"added {len(names)} user(s)")


# A deadlock or serialization failure runs the request again (up to 3 times);
# Flask turns view exceptions into 500s, so it hands them to the middleware first.
report_flask_exceptions(app)
# Keys live in a table of their own, in the users' database, committed with the work.
keys = IdempotencyKeys()
create_tables(keys.metadata)
app.wsgi_app = SessionMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, db, retry=Retry(3), idempotency=keys
)
