"""A Flask-SQLAlchemy application, each request one unit of work, migrated by Flask-Migrate.

``flask --app blog db upgrade`` finds :func:`create_app` and runs Alembic
through Flask-Migrate; the adapter is installed but, outside requests,
``db.session`` is Flask-SQLAlchemy's own and migrations never see it.
"""

from __future__ import annotations

import os

from flask import Flask, request
from flask.typing import ResponseReturnValue
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wsgi_sqla.flask_sqlalchemy


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()


class Post(db.Model):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    published: Mapped[bool] = mapped_column(default=False, server_default=false())


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///blog.sqlite3")
    db.init_app(app)
    migrate.init_app(app, db)
    wsgi_sqla.flask_sqlalchemy.init_app(app, db)

    @app.post("/posts")
    def create_post() -> ResponseReturnValue:
        post = Post(title=request.get_json()["title"])
        db.session.add(post)  # no commit: the response's status decides
        db.session.flush()
        return {"id": post.id}, 201

    return app
