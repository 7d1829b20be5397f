"""Helpers the tests import explicitly (fixtures live in conftest.py).

* the database matrix: :data:`DATABASES`, :func:`database_url`, :func:`make_engine`;
* :class:`Models` (users, posts, pledges) and :class:`Probe`, which reads the
  database through its own connection, never the session under test;
* :func:`serve`, the one in-process WSGI server, and the :class:`Exchange`
  it records;
* applications and bodies: :func:`answering`, :func:`saving`, :class:`ClosingBody`;
* :func:`ignore_response`, a ``start_response`` that keeps nothing;
* :class:`Boom`, the code under test's own failure;
* :func:`missing`, for a component a test needs and cannot find;
* :func:`live_requested`: whether the live tests (own servers, clusters) run.

Round trips are counted with :func:`wsgi_sqla.testing.count_round_trips`,
the helper the package offers its users and the benchmark uses too.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, scoped_session
from werkzeug.test import EnvironBuilder

from wsgi_sqla import declarative_base

if TYPE_CHECKING:
    from _typeshed import OptExcInfo

__all__ = [
    "DATABASES",
    "LIVE",
    "LIVE_SKIP",
    "STYLES",
    "Boom",
    "ClosingBody",
    "Exchange",
    "FakeServer",
    "Models",
    "Probe",
    "Style",
    "answering",
    "backend",
    "backend_query",
    "database_url",
    "ignore_response",
    "in_child",
    "libc_fork",
    "live_requested",
    "make_engine",
    "missing",
    "saving",
    "serve",
]


def missing(reason: str) -> NoReturn:
    """A component the test needs is not here: skip on a laptop, fail in CI.

    ``reason`` names what to set or install. CI (``CI=true``) must run every
    test, so there a missing database, pooler, replica or server is a failure.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a needed component is missing: {reason}", pytrace=False)
    pytest.skip(reason)


#: The variable that asks for the live tests on a laptop; CI (``CI=true``) always runs them.
LIVE = "WSGI_SQLA_LIVE"
LIVE_SKIP = (
    f"live test (starts its own servers, PgBouncer, clusters or workers): "
    f"set {LIVE}=1 to run it (CI=true always does)"
)


def live_requested() -> bool:
    """Whether the live tests run: ``WSGI_SQLA_LIVE=1``, or ``CI=true`` (CI runs everything)."""
    return os.environ.get(LIVE) == "1" or os.environ.get("CI") == "true"


def require_flask_sqlalchemy() -> None:
    """Skip the calling module (a conftest.py: its directory) without Flask-SQLAlchemy.

    Flask-SQLAlchemy and Flask-Migrate come with the ``test`` extra; nox's
    oldest combination (SQLAlchemy 2.0.0) leaves them out, because
    Flask-SQLAlchemy 3.1 needs SQLAlchemy>=2.0.16.
    """
    reason = (
        "Flask-SQLAlchemy and Flask-Migrate are not installed: pip install -e '.[test]' "
        "(they need SQLAlchemy>=2.0.16, so nox's SQLAlchemy 2.0.0 combination leaves them out)"
    )
    pytest.importorskip("flask_sqlalchemy", reason=reason)
    pytest.importorskip("flask_migrate", reason=reason)


# -- databases -------------------------------------------------------------------------

#: Each database of the matrix, and the variable holding its URL (SQLite needs none).
DATABASES: dict[str, str | None] = {
    "sqlite": None,
    "postgresql": "WSGI_SQLA_POSTGRESQL_URL",
    "mariadb": "WSGI_SQLA_MARIADB_URL",
}
EXAMPLE_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
}


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


class Models:
    """A fresh model set (users, posts, pledges) on ``session``, for one test."""

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


#: The in-doubt COMMIT tests' table, on its own MetaData. No unique key on the
#: tag: work done twice shows as two rows.
tagged_rows = Table(
    "wsgi_sqla_in_doubt",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("tag", String(40), nullable=False),
)


class Boom(Exception):
    """Raised by the code under test on purpose; nothing else raises it."""


# -- the in-process server ---------------------------------------------------------------


class Exchange:
    """What :func:`serve` saw of one request, in the order it saw it.

    ``events`` holds ``("start_response", (status, snapshot))``, ``("write",
    data)``, ``("chunk", data)``, ``("disconnect", None)``, ``("error", exc)``
    and ``("close", None)``; ``snapshot`` is what ``on_start_response``
    returned when that status reached the server.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.error: BaseException | None = None
        #: the body was read to its end without an error or a disconnect
        self.finished = False

    @property
    def start_responses(self) -> int:
        """How many statuses reached the server."""
        return sum(1 for kind, _ in self.events if kind == "start_response")

    @property
    def at_status(self) -> Any:
        """What ``on_start_response`` returned when the last status reached the server."""
        snapshots = [value[1] for kind, value in self.events if kind == "start_response"]
        return snapshots[-1] if snapshots else None

    @property
    def client_status(self) -> str:
        """The status line a client would receive: the server answers 500 on an error."""
        if self.error is not None and self.status is None:
            return "500 Internal Server Error"
        assert self.status is not None
        return self.status


def serve(
    app: Any,
    *,
    body: bytes = b"",
    path: str = "/",
    method: str = "GET",
    environ: dict[str, Any] | None = None,
    on_start_response: Callable[[], Any] | None = None,
    disconnect_after: int | None = None,
    close: bool = True,
) -> Exchange:
    """Drive ``app`` through one request as a PEP 3333 server does, recording each step.

    The environ is Werkzeug's (:class:`werkzeug.test.EnvironBuilder`) with
    ``body`` as the request body; ``environ`` entries are applied on top, a
    ``None`` value removing the key. An exception from the application is
    recorded in :attr:`Exchange.error`, not raised. ``on_start_response`` is
    called when a status reaches the server, so a test can look at the
    database at exactly that moment. ``disconnect_after`` stops reading the
    body after that many chunks (a client that went away); ``close=False``
    plays a server that never calls ``close()``.
    """
    seen = Exchange()
    builder = EnvironBuilder(path=path, method=method, data=body or None)
    try:
        env = builder.get_environ()
    finally:
        builder.close()
    for key, value in (environ or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value

    def write(data: bytes) -> None:
        seen.events.append(("write", data))
        seen.body += data

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if exc_info is not None and seen.body:
            raise exc_info[1].with_traceback(exc_info[2])
        seen.status, seen.headers = status, headers
        snapshot = on_start_response() if on_start_response else None
        seen.events.append(("start_response", (status, snapshot)))
        return write

    try:
        iterable = app(env, start_response)
    except Exception as exc:
        seen.error = exc
        seen.events.append(("error", exc))
        return seen
    try:
        for count, chunk in enumerate(iterable, start=1):
            seen.events.append(("chunk", chunk))
            seen.body += chunk
            if disconnect_after is not None and count >= disconnect_after:
                seen.events.append(("disconnect", None))
                break
        else:
            seen.finished = True
    except Exception as exc:
        seen.error = exc
        seen.events.append(("error", exc))
    finally:
        if close and hasattr(iterable, "close"):
            seen.events.append(("close", None))
            try:
                iterable.close()
            except Exception as exc:  # a server logs it; the response is out already
                seen.error = exc
                seen.events.append(("error", exc))
    return seen


#: :func:`serve` with some arguments given, as the ``fake_server`` fixture is.
FakeServer = Callable[..., Exchange]


# -- applications ---------------------------------------------------------------------------

#: How an application hands over its body: a list, a generator that calls
#: ``start_response`` lazily, or the ``write()`` callable.
Style = Literal["list", "lazy", "write"]
#: Every :data:`Style`, for ``pytest.mark.parametrize("style", STYLES)``.
STYLES: list[Style] = ["list", "lazy", "write"]


def ignore_response(
    status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
) -> Callable[[bytes], object]:
    """A ``start_response`` for a test that reads the body only: keeps nothing, writes nowhere."""
    return lambda data: None


def answering(
    status: str,
    work: Callable[[], object] = lambda: None,
    *,
    style: Style = "list",
    body: bytes = b"done",
) -> Any:
    """An application that does ``work``, then answers ``status`` with ``body`` in ``style``."""
    headers = [("Content-Type", "text/plain")]

    def listing(environ: Any, start_response: Any) -> Iterable[bytes]:
        work()
        start_response(status, headers)
        return [body]

    def lazy(environ: Any, start_response: Any) -> Iterator[bytes]:
        work()
        start_response(status, headers)
        yield body

    def writing(environ: Any, start_response: Any) -> Iterable[bytes]:
        work()
        start_response(status, headers)(body)
        return []

    return {"list": listing, "lazy": lazy, "write": writing}[style]


def saving(models: Models, status: str, *, name: str = "ann", style: Style = "list") -> Any:
    """An application that saves a user called ``name``, then answers ``status``."""
    return answering(status, lambda: models.User(name=name).save(), style=style)


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


# -- forks: which connection a child process gets ------------------------------------------


def backend_query(engine: Engine | Connection) -> str:
    """The statement that names the server-side id of the connection it runs on."""
    if engine.dialect.name == "postgresql":
        return "SELECT pg_backend_pid()"
    return "SELECT CONNECTION_ID()"


def backend(engine: Engine) -> int:
    """The server-side id of the connection the pool hands out."""
    with engine.connect() as connection:
        return int(connection.execute(text(backend_query(engine))).scalar_one())


def libc_fork() -> int:
    """fork(2) through libc, as uWSGI forks its workers: no ``register_at_fork`` hook runs."""
    return int(ctypes.CDLL(None, use_errno=True).fork())


def in_child(work: Callable[[], int], fork: Callable[[], int] = os.fork) -> int:
    """Run ``work`` in a child forked by ``fork`` and return its result."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # the child: report, and leave without running any cleanup
        code = 1
        try:
            os.write(write_end, str(work()).encode())
            code = 0
        finally:
            os._exit(code)
    assert pid > 0, "fork failed"
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return int(answer)
