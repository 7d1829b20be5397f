"""The examples' database: an engine, a scoped session and one model.

``DATABASE_URL`` picks the database (any URL SQLAlchemy speaks); without it
the examples use an embedded SQLite file in the current directory.
"""

from __future__ import annotations

import os

from sqlalchemy import String, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from wsgi_sqla import ActiveRecordMixin

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///wsgi_sqla_example.sqlite3")

engine = create_engine(DATABASE_URL)
db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class User(Base):
    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name}


def _create_tables() -> None:
    try:
        Base.metadata.create_all(engine)
    except DBAPIError:
        # Several gunicorn workers import this at once; one may have created the
        # table between our check and our CREATE. Checking again settles it, and
        # any other failure raises again.
        Base.metadata.create_all(engine)


_create_tables()
