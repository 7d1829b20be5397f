"""Enqueue a Celery task from a view only once the row it needs is committed.

``POST /signup`` creates a user and asks for a welcome e-mail. Calling
``send_welcome.delay(user.id)`` in the view would be a race: the worker can
pick the task up before the request commits (and look for a user that is not
there yet), or the request can roll back after the task was sent (and the
e-mail goes to someone who never signed up). ``after_commit`` sends the task
after the commit, and not at all if the request rolls back. The task itself
is one unit of work too: its base, ``DbTask``, commits what it wrote when it
returns and rolls it back when it raises.

Run it with Redis as the broker (any Celery broker works)::

    celery -A examples.celery_app worker
    gunicorn examples.celery_app:app
    curl -X POST -H 'Content-Type: application/json' -d '{"name": "ann"}' localhost:8000/signup

``DATABASE_URL`` (see ``examples/models.py``), ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` choose the database, the broker and the result store.
"""

from __future__ import annotations

import os

from celery import Celery
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import ForeignKey, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from wsgi_sqla import SessionMiddleware, after_commit
from wsgi_sqla.celery import SessionTask

from .models import Base, User, db, engine


class Welcome(Base):
    """A welcome e-mail that was sent: at most one per user."""

    __tablename__ = "example_welcomes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("example_users.id"), unique=True)


Welcome.__table__.create(engine, checkfirst=True)

celery_app = Celery(
    __name__,
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
)


class DbTask(SessionTask):
    """Every task on this base is one unit of work over ``db``."""

    sessions = (db,)


@celery_app.task(base=DbTask)
def send_welcome(user_id: int) -> str:
    user = User.get(user_id)
    if user is None:  # cannot happen when the task is sent by after_commit
        raise LookupError(f"user {user_id} is not in the database")
    # Sending the e-mail would go here; recording it commits with the task.
    Welcome(user_id=user.id).save()
    return f"welcome sent to {user.name} (user {user.id})"


app = Flask(__name__)


@app.post("/signup")
def signup() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        return jsonify(error='expected a JSON body {"name": "<non-empty string>"}'), 400
    try:
        user = User(name=name).save()
    except IntegrityError:
        return jsonify(error="a user with that name exists"), 409
    # Sent after the commit, with no unit of work running; never if the request rolls back.
    after_commit(send_welcome.delay, user.id)
    referrer = data.get("referred_by")
    if referrer is not None and db.scalar(select(User).where(User.name == referrer)) is None:
        # The 400 rolls the new user back, and with it the welcome e-mail.
        return jsonify(error=f"unknown referrer {referrer!r}"), 400
    return jsonify(id=user.id, name=user.name), 201


app.wsgi_app = SessionMiddleware(app.wsgi_app, db)  # type: ignore[method-assign]
