"""Fork safety: a child process never uses a connection its parent opened.

These tests fork the test process itself, the way ``gunicorn --preload``
forks its workers from a master that already imported the application, and
ask the database which connection (backend) the child is talking over. The
gunicorn end of the story is in tests/server/test_gunicorn.py.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import scoped_session, sessionmaker
from support import make_engine

from wsgi_sqla import SessionMiddleware, fork_safe

SERVERS = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)


@pytest.fixture
def fresh(engine: Engine) -> Iterator[Engine]:
    """An engine of its own, so that registering it for fork safety stays in this test."""
    own = make_engine(engine.url.render_as_string(hide_password=False))
    yield own
    own.dispose()


def backend_query(engine: Engine) -> str:
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


#: Python's fork, which runs the fork hooks, and one that runs none.
FORKS = pytest.mark.parametrize(
    "fork",
    [pytest.param(os.fork, id="os.fork"), pytest.param(libc_fork, id="libc-fork-without-hooks")],
)


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


@SERVERS
@FORKS
def test_child_of_an_unprotected_engine_would_share_the_parents_connection(
    fresh: Engine, fork: Callable[[], int]
) -> None:
    """The hazard fork_safe() removes, with either fork; shows that the test below can fail."""
    parents = backend(fresh)
    assert in_child(lambda: backend(fresh), fork) == parents


@SERVERS
@FORKS
def test_child_of_a_fork_safe_engine_opens_its_own_connection(
    fresh: Engine, fork: Callable[[], int]
) -> None:
    fork_safe(fresh)
    parents = backend(fresh)
    assert in_child(lambda: backend(fresh), fork) != parents
    assert backend(fresh) == parents, "the child closed the parent's connection"


@SERVERS
def test_session_middleware_makes_its_sessions_engines_fork_safe(fresh: Engine) -> None:
    SessionMiddleware(lambda environ, start_response: [], scoped_session(sessionmaker(bind=fresh)))
    parents = backend(fresh)
    assert in_child(lambda: backend(fresh)) != parents


@SERVERS
def test_session_middleware_covers_engines_bound_per_model(fresh: Engine) -> None:
    class Model:
        pass

    SessionMiddleware(
        lambda environ, start_response: [],
        scoped_session(sessionmaker(binds={Model: fresh})),
    )
    parents = backend(fresh)
    assert in_child(lambda: backend(fresh)) != parents


def test_fork_safe_refuses_what_is_not_an_engine() -> None:
    with pytest.raises(TypeError, match=r"fork_safe\(\): needs a sqlalchemy.Engine, got .*str"):
        fork_safe("postgresql://")  # type: ignore[arg-type]


@SERVERS
def test_without_fork_hooks_a_request_in_the_child_gets_a_connection_of_its_own(
    fresh: Engine,
) -> None:
    session = scoped_session(sessionmaker(bind=fresh))
    query = backend_query(fresh)
    seen: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(int(session.execute(text(query)).scalar_one()))
        start_response("200 OK", [])
        return [b""]

    middleware = SessionMiddleware(app, session)
    parents = backend(fresh)

    def request() -> int:
        body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
        list(body)
        getattr(body, "close", lambda: None)()
        return seen[-1]

    assert in_child(request, libc_fork) != parents
    assert backend(fresh) == parents, "the child closed the parent's connection"
