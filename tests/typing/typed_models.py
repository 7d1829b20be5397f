"""A user's typed models module: must pass ``mypy --strict`` with no plugin and no ignores.

``assert_type`` makes mypy itself check what the ActiveRecord methods return.
"""

from __future__ import annotations

from sqlalchemy import String, create_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Query,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from typing_extensions import assert_type

from wsgi_sqla import ActiveRecordMixin

db: scoped_session[Session] = scoped_session(sessionmaker(bind=create_engine("sqlite://")))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class User(Base):
    __tablename__ = "typed_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)


def exercise() -> None:
    user = User(name="Foo Bar")
    assert_type(user.save(), User)
    assert_type(user.update(name="Bat"), User)
    assert_type(User.get(1), User | None)
    assert_type(User.query, Query[User])
    assert_type(User.query.filter_by(name="Bat").one(), User)
    found = User.get(1)
    if found is not None:
        assert_type(found.name, str)
        found.delete()
