"""Fork safety: a child process never uses a connection its parent opened.

These tests fork the test process itself, the way ``gunicorn --preload``
forks its workers from a master that already imported the application, and
ask the database which connection (backend) the child is talking over. The
gunicorn end of the story is in tests/server/test_gunicorn.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import celery
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import scoped_session, sessionmaker
from support import backend, backend_query, ignore_response, in_child, libc_fork, make_engine

from wsgi_sqla import SessionMiddleware, fork_safe, transaction
from wsgi_sqla.celery import task_base

SERVERS = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)


@pytest.fixture
def fresh(engine: Engine) -> Iterator[Engine]:
    """An engine of its own, so that registering it for fork safety stays in this test."""
    own = make_engine(engine.url.render_as_string(hide_password=False))
    yield own
    own.dispose()


@pytest.fixture
def fresh_pinging(engine: Engine) -> Iterator[Engine]:
    """Like ``fresh``, with ``pool_pre_ping=True``."""
    own = make_engine(engine.url.render_as_string(hide_password=False), pool_pre_ping=True)
    yield own
    own.dispose()


#: Python's fork, which runs the fork hooks, and one that runs none.
FORKS = pytest.mark.parametrize(
    "fork",
    [pytest.param(os.fork, id="os.fork"), pytest.param(libc_fork, id="libc-fork-without-hooks")],
)


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


#: Each owner of units of work, built over a scoped session.
OWNERS = pytest.mark.parametrize(
    "owner",
    [
        pytest.param(
            lambda db: SessionMiddleware(lambda environ, start_response: [], db),
            id="SessionMiddleware",
        ),
        pytest.param(transaction, id="transaction"),
        pytest.param(task_base, id="task_base"),
    ],
)


@SERVERS
@OWNERS
def test_each_owner_of_units_makes_its_sessions_engines_fork_safe(
    fresh: Engine, owner: Callable[[scoped_session[Any]], object]
) -> None:
    owner(scoped_session(sessionmaker(bind=fresh)))
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
        body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, ignore_response)
        list(body)
        getattr(body, "close", lambda: None)()
        return seen[-1]

    assert in_child(request, libc_fork) != parents
    assert backend(fresh) == parents, "the child closed the parent's connection"


# -- pool_pre_ping in a child forked without hooks ---------------------------------


def last_statement(engine: Engine, backend_pid: int) -> str:
    """What the PostgreSQL backend ``backend_pid`` last ran, asked over another connection."""
    with engine.connect() as connection:
        sql = text("SELECT query FROM pg_stat_activity WHERE pid = :pid")
        return str(connection.execute(sql, {"pid": backend_pid}).scalar_one())


@pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)
def test_without_fork_hooks_a_pre_pinging_engine_pings_over_the_parents_connection(
    engine: Engine, fresh_pinging: Engine
) -> None:
    """The hazard: the ping runs before any checkout listener can refuse the connection.

    Only PostgreSQL says what a backend last ran (MariaDB's ping is a protocol
    command that leaves no trace); shows that the tests below can fail.
    """
    fork_safe(fresh_pinging)
    parents = backend(fresh_pinging)
    before = last_statement(engine, parents)
    assert in_child(lambda: backend(fresh_pinging), libc_fork) != parents
    assert last_statement(engine, parents) != before  # the child's ping


def in_a_transaction_block(db: scoped_session[Any]) -> Callable[[], int]:
    """A script's block, which builds its transaction() in the child."""

    def block() -> int:
        with transaction(db):
            return int(db.execute(text(backend_query(db.get_bind()))).scalar_one())

    return block


def in_a_task(db: scoped_session[Any]) -> Callable[[], int]:
    """A Celery task, defined before the fork and called as a worker calls it (no broker)."""

    @celery.Celery("wsgi_sqla-tests", set_as_current=False).task(base=task_base(db))
    def which_backend() -> int:
        return int(db.execute(text(backend_query(db.get_bind()))).scalar_one())

    return lambda: int(which_backend())


@pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "unit",
    [
        pytest.param(in_a_transaction_block, id="transaction"),
        pytest.param(in_a_task, id="task"),
    ],
)
def test_without_fork_hooks_a_unit_outside_a_request_never_pings_over_the_parents_connection(
    engine: Engine, fresh_pinging: Engine, unit: Callable[[scoped_session[Any]], Callable[[], int]]
) -> None:
    db = scoped_session(sessionmaker(bind=fresh_pinging))
    work = unit(db)
    parents = backend(fresh_pinging)
    before = last_statement(engine, parents)
    assert in_child(work, libc_fork) != parents
    assert last_statement(engine, parents) == before
