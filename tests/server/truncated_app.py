"""Views that save the amount a client posted, for the truncated-body tests.

``POST /pledges`` with the form field ``amount`` stores one pledge and
answers 201, in Flask (``truncated_app:flask_app``, which parses
``request.form``) and in plain WSGI (``truncated_app:plain_app``, which
reads ``CONTENT_LENGTH`` bytes of ``wsgi.input`` and parses them itself).
Neither checks that the body is complete: that is the middleware's job.

``DATABASE_URL`` says where the database is. Tables are created by the
test, not here: workers importing this module at once would race.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import flask
import flask.typing
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import SessionMiddleware

engine, db = served_database()


class Base(DeclarativeBase):
    pass


class Pledge(Base):
    __tablename__ = "truncated_pledges"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]


def pledge(amount: str) -> bytes:
    db.add(Pledge(amount=int(amount)))
    db.flush()
    return f"pledged {amount}\n".encode()


flask_app = flask.Flask(__name__)


@flask_app.post("/pledges")
def flask_pledge() -> flask.typing.ResponseReturnValue:
    return pledge(flask.request.form["amount"]), 201


flask_app.wsgi_app = SessionMiddleware(flask_app.wsgi_app, db)  # type: ignore[method-assign]


def plain_pledge(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    answer = pledge(parse_qs(body.decode())["amount"][0])
    start_response("201 Created", [("Content-Length", str(len(answer)))])
    return [answer]


plain_app = SessionMiddleware(plain_pledge, db)
