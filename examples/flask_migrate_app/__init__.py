"""A Flask-SQLAlchemy application with Flask-Migrate and the wsgi_sqla adapter.

The schema is changed by migrations only (docs/migrations/flask-migrate.rst)::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/app \\
        flask --app examples.flask_migrate_app db upgrade \\
        --directory examples/flask_migrate_app/migrations
"""

from __future__ import annotations

import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wsgi_sqla.flask_sqlalchemy


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()


class Note(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


def create_app() -> Flask:
    """The application factory: Flask-SQLAlchemy, Flask-Migrate, then the adapter."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "DATABASE_URL", "sqlite:///wsgi_sqla_migrate_example.sqlite3"
    )
    db.init_app(app)
    migrate.init_app(app, db)
    wsgi_sqla.flask_sqlalchemy.init_app(app, db)
    return app
