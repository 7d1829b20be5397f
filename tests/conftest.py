"""Shared fixtures: the database matrix, engines, scoped sessions and models.

Every behavioural test that asks for ``engine`` (or anything built on it)
runs once per database: SQLite always, PostgreSQL when
``WSGI_SQLA_POSTGRESQL_URL`` is set, MariaDB when ``WSGI_SQLA_MARIADB_URL``
is set. A database whose URL is set but which cannot be reached fails the
test instead of skipping it, so CI cannot go green without all three.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, mapped_column, relationship, scoped_session, sessionmaker

from wsgi_sqla import declarative_base

DATABASES: dict[str, str | None] = {
    "sqlite": None,
    "postgresql": "WSGI_SQLA_POSTGRESQL_URL",
    "mariadb": "WSGI_SQLA_MARIADB_URL",
}
EXAMPLE_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
}

_engines: dict[str, Engine] = {}


def database_url(name: str, tmp_dir: Path) -> str:
    """The URL for database ``name``; skips the test when its variable is unset."""
    variable = DATABASES[name]
    if variable is None:
        return f"sqlite:///{tmp_dir / 'wsgi_sqla.sqlite3'}"
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"set {variable} (e.g. {EXAMPLE_URLS[name]}) to run against {name}")
    return url


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, **kw: Any) -> Engine:
    """An engine as the tests use it; SQLite gets foreign keys switched on."""
    engine = create_engine(url, **kw)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


@pytest.fixture(params=list(DATABASES))
def db_name(request: pytest.FixtureRequest) -> str:
    """The database this instance of the test runs against."""
    return str(request.param)


@pytest.fixture
def engine(db_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on the database under test; asserts no connection leaked afterwards."""
    if db_name == "sqlite":
        eng = make_engine(database_url(db_name, tmp_path_factory.mktemp("sqlite")))
    else:
        url = database_url(db_name, Path())
        eng = _engines.get(db_name)
        if eng is None:
            eng = _engines[db_name] = make_engine(url)
            try:
                with eng.connect():
                    pass
            except OperationalError as exc:
                pytest.fail(f"{DATABASES[db_name]}={url} is set but unreachable: {exc}")
    yield eng
    if eng.dialect.name == "sqlite":
        eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[scoped_session[Any]]:
    """A thread-local scoped session bound to ``engine``."""
    scoped = scoped_session(sessionmaker(bind=engine))
    yield scoped
    scoped.remove()


class Models:
    """A fresh model set (users and posts) created in the database for one test."""

    def __init__(self, session: scoped_session[Any]) -> None:
        self.Base = Base = declarative_base(session)

        class User(Base):  # type: ignore[misc,valid-type]
            __tablename__ = "wsgi_sqla_users"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(80), unique=True)
            posts: Mapped[list[Post]] = relationship(back_populates="author")

        class Post(Base):  # type: ignore[misc,valid-type]
            __tablename__ = "wsgi_sqla_posts"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(String(80))
            author_id: Mapped[int] = mapped_column(ForeignKey("wsgi_sqla_users.id"))
            author: Mapped[User] = relationship(back_populates="posts")

        self.User = User
        self.Post = Post


@pytest.fixture
def models(session: scoped_session[Any], engine: Engine) -> Iterator[Models]:
    """Users and posts tables, created for the test and dropped after it."""
    m = Models(session)
    m.Base.metadata.drop_all(engine)
    m.Base.metadata.create_all(engine)
    yield m
    session.remove()
    m.Base.metadata.drop_all(engine)


class Probe:
    """Reads the database through its own connection, never the session under test."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def count(self, table: str) -> int:
        """Rows in ``table``."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(text(table))).scalar_one()
            )

    def names(self) -> list[str]:
        """User names, sorted."""
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT name FROM wsgi_sqla_users ORDER BY name"))
            return [row[0] for row in rows]

    def checked_out(self) -> int:
        """Connections currently checked out of the engine's pool."""
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]


@pytest.fixture
def probe(engine: Engine) -> Probe:
    """A :class:`Probe` on the database under test."""
    return Probe(engine)
