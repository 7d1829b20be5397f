"""An application on this package's own scoped session whose schema Alembic manages.

Nothing here creates tables: ``alembic upgrade head`` does
(docs/migrations/alembic.rst)::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/app \\
        alembic -c examples/alembic_migrations/alembic.ini upgrade head
"""

from __future__ import annotations

import os

from sqlalchemy import String, create_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from wsgi_sqla import ActiveRecordMixin

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///wsgi_sqla_alembic_example.sqlite3")
engine = create_engine(DATABASE_URL)
db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class Tag(Base):
    __tablename__ = "example_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(40), unique=True)
