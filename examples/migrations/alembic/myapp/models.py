"""The application's models: an ActiveRecord-style base on a scoped session.

Importing this module connects to nothing and creates no table: Alembic's
``env.py`` imports it to read ``Base.metadata``, and the migrations create
the tables.
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

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///myapp.sqlite3")

engine = create_engine(DATABASE_URL)
db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
