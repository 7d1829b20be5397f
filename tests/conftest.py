"""Shared fixtures: the database matrix, engines, scoped sessions and models.

Every behavioural test that asks for ``engine`` (or anything built on it)
runs once per database: SQLite always, PostgreSQL when
``WSGI_SQLA_POSTGRESQL_URL`` is set, MariaDB when ``WSGI_SQLA_MARIADB_URL``
is set. A database whose URL is set but which cannot be reached fails the
test instead of skipping it, so CI cannot go green without all three.
"""

from __future__ import annotations

import io
import os
import sys
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


@pytest.fixture(scope="session", autouse=True)
def _dispose_shared_engines() -> Iterator[None]:
    yield
    for shared in _engines.values():
        shared.dispose()


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

    def __init__(self, session: scoped_session[Any], dialect: str) -> None:
        self.Base = Base = declarative_base(session)
        # MariaDB has no deferrable constraints; there the key is checked at once.
        deferred: dict[str, Any] = (
            {} if dialect in ("mysql", "mariadb") else {"deferrable": True, "initially": "DEFERRED"}
        )

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

        class Pledge(Base):  # type: ignore[misc,valid-type]
            """Refers to a user through a foreign key checked only at COMMIT."""

            __tablename__ = "wsgi_sqla_pledges"
            id: Mapped[int] = mapped_column(primary_key=True)
            user_id: Mapped[int] = mapped_column(ForeignKey("wsgi_sqla_users.id", **deferred))

        self.User = User
        self.Post = Post
        self.Pledge = Pledge


@pytest.fixture
def models(session: scoped_session[Any], engine: Engine) -> Iterator[Models]:
    """Users and posts tables, created for the test and dropped after it."""
    m = Models(session, engine.dialect.name)
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


class Exchange:
    """What a :class:`Server` saw of one request, in the order it saw it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.error: BaseException | None = None
        self.closes = 0

    @property
    def client_status(self) -> str:
        """The status line a client would receive: the server answers 500 on an error."""
        if self.error is not None and self.status is None:
            return "500 Internal Server Error"
        assert self.status is not None
        return self.status


class Server:
    """Drives a WSGI application as a PEP 3333 server does, recording each step.

    ``on_start_response`` is called when the application's status reaches the
    server; its return value is recorded, so a test can look at the database
    at exactly that moment. ``disconnect_after`` stops reading the body after
    that many chunks (a client that went away); ``close=False`` plays a
    server that never calls ``close()``.
    """

    def __init__(self, on_start_response: Any = None) -> None:
        self.on_start_response = on_start_response

    def request(
        self,
        app: Any,
        path: str = "/",
        *,
        disconnect_after: int | None = None,
        close: bool = True,
    ) -> Exchange:
        seen = Exchange()
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
        }

        def write(data: bytes) -> None:
            seen.events.append(("write", data))
            seen.body += data

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            if exc_info is not None and seen.body:
                raise exc_info[1].with_traceback(exc_info[2])
            seen.status, seen.headers = status, headers
            snapshot = self.on_start_response() if self.on_start_response else None
            seen.events.append(("start_response", (status, snapshot)))
            return write

        try:
            body = app(environ, start_response)
        except Exception as exc:
            seen.error = exc
            seen.events.append(("error", exc))
            return seen
        try:
            for count, chunk in enumerate(body, start=1):
                seen.events.append(("chunk", chunk))
                seen.body += chunk
                if disconnect_after is not None and count >= disconnect_after:
                    seen.events.append(("disconnect", None))
                    break
        except Exception as exc:
            seen.error = exc
            seen.events.append(("error", exc))
        finally:
            if close and hasattr(body, "close"):
                seen.events.append(("close", None))
                try:
                    body.close()
                except Exception as exc:  # a server logs it; the response is out already
                    seen.error = exc
                    seen.events.append(("error", exc))
        return seen


@pytest.fixture
def server(probe: Probe) -> Server:
    """A :class:`Server` that records the committed user names at start_response time."""
    return Server(on_start_response=probe.names)


class ClosingBody:
    """An application iterable that counts calls to its close()."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closes = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("the body failed while streaming")
            yield chunk

    def close(self) -> None:
        self.closes += 1
