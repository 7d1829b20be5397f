"""Helpers for the Flask-SQLAlchemy adapter's tests (fixtures live in conftest.py).

:class:`FsaModels` is a fresh ``SQLAlchemy()`` with its models, made per test
as an application module would make it once; :func:`make_app` is the
application factory such a module has, with ``wsgi_sqla.flask_sqlalchemy``
added in the one line the adapter asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wsgi_sqla.flask_sqlalchemy

__all__ = [
    "FsaModels",
    "InitOrder",
    "LiteModels",
    "body_streaming",
    "make_app",
    "make_lite_app",
    "sqlalchemy_uri",
]

#: Which ``init_app`` runs first: Flask-SQLAlchemy's (``"db-first"``) or the adapter's.
InitOrder = Literal["db-first", "adapter-first"]


def sqlalchemy_uri(engine: Any) -> str:
    """The engine's URL as ``SQLALCHEMY_DATABASE_URI`` takes it (password included)."""
    return str(engine.url.render_as_string(hide_password=False))


class FsaModels:
    """One ``db = SQLAlchemy(...)`` and its models, as an application module defines them.

    ``User`` lives in the table the shared :class:`support.Probe` reads
    (``wsgi_sqla_users``); ``Note`` is on the bind ``"notes"``
    (``SQLALCHEMY_BINDS``).
    """

    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        self.db = db = SQLAlchemy(model_class=Base)

        class User(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "wsgi_sqla_users"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(80), unique=True)

        class Post(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "wsgi_sqla_posts"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(String(80))
            author_id: Mapped[int] = mapped_column(ForeignKey("wsgi_sqla_users.id"))

        class Note(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "wsgi_sqla_notes"
            __bind_key__ = "notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(String(80))

        self.User: Any = User
        self.Post: Any = Post
        self.Note: Any = Note


def make_app(
    models: FsaModels,
    uri: str,
    *,
    binds: dict[str, str] | None = None,
    order: InitOrder = "db-first",
    track_modifications: bool = False,
    **options: Any,
) -> flask.Flask:
    """An application factory's ``create_app()``: config, ``db.init_app``, the adapter, views.

    Views (``name`` in the path):

    * ``POST /users/<name>``: adds a user and answers 201 (``?status=`` another status,
      ``?raise=1`` raises after the add);
    * ``POST /commit-then/<name>``: adds and commits ``<name>``, then adds ``<name>-2``, then
      answers ``?status=`` (200);
    * ``GET /users/<id>``: ``db.get_or_404``;  ``GET /users``: ``db.paginate`` of the names.
    """
    db = models.db
    User = models.User
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    app.config["SQLALCHEMY_BINDS"] = {"notes": binds["notes"] if binds else uri}
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = track_modifications
    if order == "db-first":
        db.init_app(app)
        wsgi_sqla.flask_sqlalchemy.init_app(app, db, **options)
    else:
        wsgi_sqla.flask_sqlalchemy.init_app(app, db, **options)
        db.init_app(app)

    @app.post("/users/<name>")
    def add_user(name: str) -> tuple[str, int]:
        db.session.add(User(name=name))
        db.session.flush()
        if flask.request.args.get("raise"):
            raise RuntimeError("the view failed after writing")
        return "added", int(flask.request.args.get("status", 201))

    @app.post("/commit-then/<name>")
    def commit_then(name: str) -> tuple[str, int]:
        db.session.add(User(name=name))
        db.session.commit()
        db.session.add(User(name=f"{name}-2"))
        return "done", int(flask.request.args.get("status", 200))

    @app.get("/users/<int:ident>")
    def get_user(ident: int) -> str:
        return str(db.get_or_404(User, ident).name)

    @app.get("/users")
    def list_users() -> str:
        page = db.paginate(db.select(User).order_by(User.name), per_page=2)
        return ",".join(user.name for user in page.items) + f";total={page.total}"

    return app


def body_streaming(rows: Iterator[str]) -> flask.Response:
    """A plain streamed response (no ``stream_with_context``): no Flask context while it runs."""
    return flask.Response(rows, mimetype="text/plain")


class LiteModels:
    """One Flask-SQLAlchemy-Lite ``db = SQLAlchemy()`` and a plain declarative ``User``."""

    def __init__(self) -> None:
        from flask_sqlalchemy_lite import SQLAlchemy as LiteSQLAlchemy

        class Base(DeclarativeBase):
            pass

        class User(Base):
            __tablename__ = "wsgi_sqla_users"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(80), unique=True)

        self.db = LiteSQLAlchemy()
        self.Base = Base
        self.User: Any = User


def make_lite_app(
    models: LiteModels, uri: str, *, order: InitOrder = "db-first", **options: Any
) -> flask.Flask:
    """``create_app()`` of a Flask-SQLAlchemy-Lite application, with the adapter's line.

    ``POST /users/<name>`` adds a user through ``db.session`` (``?session=<name>``: through
    ``db.get_session(name)``) and answers 201, or ``?status=``.
    """
    import wsgi_sqla.flask_sqlalchemy_lite

    db = models.db
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": uri}
    if order == "db-first":
        db.init_app(app)
        wsgi_sqla.flask_sqlalchemy_lite.init_app(app, db, **options)
    else:
        wsgi_sqla.flask_sqlalchemy_lite.init_app(app, db, **options)
        db.init_app(app)

    @app.post("/users/<name>")
    def add_user(name: str) -> tuple[str, int]:
        named = flask.request.args.get("session")
        session = db.get_session(named) if named else db.session
        session.add(models.User(name=name))
        session.flush()
        return "added", int(flask.request.args.get("status", 201))

    return app
