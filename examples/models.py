"""The examples' database: an engine, a scoped session and one model.

``DATABASE_URL`` picks the database (any URL SQLAlchemy speaks); without it
the examples use an embedded SQLite file in the current directory.

``DATABASE_POOLING=transaction`` says that ``DATABASE_URL`` points at a
transaction-pooling proxy (PgBouncer with ``pool_mode = transaction``): the
engine then prepares no statements on the server (see
:func:`wsgi_sqla.transaction_pooled` and docs/deploying/pgbouncer.rst).
"""

from __future__ import annotations

import os

from sqlalchemy import MetaData, String, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from wsgi_sqla import ActiveRecordMixin, transaction_pooled

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///wsgi_sqla_example.sqlite3")
DATABASE_POOLING = os.environ.get("DATABASE_POOLING", "")

engine = create_engine(DATABASE_URL)
if DATABASE_POOLING == "transaction":
    transaction_pooled(engine)
elif DATABASE_POOLING:
    raise ValueError(
        f"DATABASE_POOLING: expected 'transaction' or nothing, got {DATABASE_POOLING!r}"
    )
db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class User(Base):
    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name}


def create_tables(metadata: MetaData) -> None:
    """Create the tables of ``metadata`` that do not exist yet."""
    try:
        metadata.create_all(engine)
    except DBAPIError:
        # Several gunicorn workers import this at once; one may have created the
        # table between our check and our CREATE. Checking again settles it, and
        # any other failure raises again.
        metadata.create_all(engine)


create_tables(Base.metadata)
