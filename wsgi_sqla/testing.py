"""Tests that isolate themselves, two ways.

:func:`reset_schema` drops and re-creates every table of a metadata. It is
the slow, blunt tool (the pattern this package grew out of ran it before
every test) and the right one for tests that change the schema, or that let
another thread or process (a Celery worker, a gunicorn server) see the data.

:func:`isolated` is the fast one. It opens one connection per engine, begins
an outer transaction on it, and binds the scoped sessions to that connection
with SQLAlchemy's ``join_transaction_mode="create_savepoint"``. Application
code does not change and does not know: the middleware, ``transaction()``
and the Celery base commit through the same
:class:`~wsgi_sqla.UnitOfWork` as in production, but each of their
sessions runs inside a SAVEPOINT of the outer transaction, so a "commit"
releases a savepoint, a rollback rolls back to it, and when the test ends the
outer transaction is rolled back and nothing is left in the database. The
pytest plugin (:mod:`wsgi_sqla.pytest_plugin`) wraps it in a fixture.

SQLite through Python's ``sqlite3`` driver needs SQLAlchemy's documented
workaround for savepoints ("Serializable isolation / Savepoints /
Transactional DDL"): the driver's own transaction handling is switched off
on the isolated connection and the outer transaction is begun with an
explicit ``BEGIN``; without it a released savepoint would be committed for
good. :func:`isolated` does this on its own connection only and restores it
before the connection goes back to the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, MetaData, event
from sqlalchemy.orm import scoped_session, sessionmaker

from ._context import quiet_leftovers
from ._owners import own_sessions
from ._unit import UnitOfWork

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Isolation", "RoundTrips", "count_round_trips", "isolated", "reset_schema"]
# outer_transaction() and restore() are also used by wsgi_sqla.flask_sqlalchemy.isolated().

# sqlite3.LEGACY_TRANSACTION_CONTROL (Python 3.12+); older drivers have no
# ``autocommit`` attribute and always behave this way.
_SQLITE_LEGACY = -1


def reset_schema(metadata: MetaData, bind: Engine | Connection) -> None:
    """Drop every table of ``metadata`` that exists, then create them all, empty.

    With an :class:`~sqlalchemy.Engine` it runs in a transaction of its own,
    so on databases with transactional DDL (PostgreSQL, SQLite) a failure
    leaves the previous schema in place; with a
    :class:`~sqlalchemy.Connection` it runs in that connection's transaction.
    Tables that are not in ``metadata`` are left alone. A session still
    holding a transaction on one of the tables makes the drop wait for it
    (PostgreSQL, MariaDB): remove your scoped sessions first.
    """
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            reset_schema(metadata, connection)
        return
    metadata.drop_all(bind)
    metadata.create_all(bind)


class Isolation:
    """What :func:`isolated` set up: one connection per engine, each in an outer transaction.

    Read through :attr:`connection` (or :attr:`connections`) in a test to see
    everything the code under test wrote, committed or not, without creating
    a session in the scoped registry.
    """

    __slots__ = ("connections",)

    def __init__(self, connections: dict[Engine, Connection]) -> None:
        #: The isolated connection of each engine the sessions are bound to.
        self.connections: dict[Engine, Connection] = connections

    @property
    def connection(self) -> Connection:
        """The isolated connection, when all the sessions use one engine."""
        if len(self.connections) != 1:
            raise RuntimeError(
                f"the sessions are bound to {len(self.connections)} engines; "
                "pick one with isolation.connections[engine]"
            )
        return next(iter(self.connections.values()))


@contextlib.contextmanager
def isolated(*sessions: scoped_session[Any]) -> Iterator[Isolation]:
    """Run a block with ``sessions`` bound to outer transactions that are rolled back at the end.

    Each scoped session's ``sessionmaker`` must be bound to an
    :class:`~sqlalchemy.Engine` (``sessionmaker(bind=engine)`` or
    ``db.configure(bind=engine)``). For the duration of the block it is
    re-bound to one connection of that engine, held inside an outer
    transaction, with ``join_transaction_mode="create_savepoint"``; its
    previous configuration is restored afterwards.

    Guarantees:

    * commits made through the unit of work (middleware, ``transaction()``,
      Celery base, or plain ``session.commit()``) release a savepoint and are
      visible to later code in the block; rollbacks undo only their savepoint;
    * when the block ends, however it ends, the sessions are removed, every
      outer transaction is rolled back and every connection is returned to
      its pool: nothing written through these sessions stays in the database;
    * a session already in a registry when the block starts is rolled back
      and removed first (:class:`~wsgi_sqla.StaleSessionWarning`);
    * inside the block, a session a request left behind with nothing in it
      (no transaction, no pending change) is closed by the next unit without
      a :class:`~wsgi_sqla.StaleSessionWarning`: Flask's and Werkzeug's test
      client never close a response unless asked (``with`` or
      ``buffered=True``), which in a test loses nothing, while in production
      the same leftover means a server that never calls ``close()``, so the
      middleware keeps warning there. A leftover holding a transaction or
      pending changes still warns.

    One scoped session per engine: the savepoints of two sessions sharing the
    isolated connection would nest, so two are refused with a ``ValueError``.
    Not covered: connections the code opens itself (``engine.connect()``,
    ``Session(engine)``), other threads (they would share one connection),
    and DDL on MariaDB/MySQL, which commits the outer transaction implicitly.

    :raises TypeError: when no session is given, one is not a
        ``scoped_session``, or a sessionmaker has no engine to bind.
    :raises ValueError: when two sessions are bound to the same engine, or a
        SQLite connection is in ``autocommit=True`` mode.
    """
    checked = own_sessions(sessions, "isolated()")
    factories = _factories_by_engine(checked)
    unit = UnitOfWork(checked)
    with contextlib.ExitStack() as stack:
        connections: dict[Engine, Connection] = {}
        for engine, factory in factories.items():
            connections[engine] = stack.enter_context(outer_transaction(engine))
            stack.callback(restore, factory, dict(factory.kw))
            factory.configure(bind=connections[engine], join_transaction_mode="create_savepoint")
        token = quiet_leftovers.set(True)
        stack.callback(quiet_leftovers.reset, token)
        # Runs first at exit: sessions the block left behind are closed while
        # their connection is still in its outer transaction.
        stack.callback(unit.remove)
        yield Isolation(connections)


def _factories_by_engine(
    sessions: tuple[scoped_session[Any], ...],
) -> dict[Engine, sessionmaker[Any]]:
    factories: dict[Engine, sessionmaker[Any]] = {}
    owners: dict[Engine, int] = {}
    for index, scoped in enumerate(sessions):
        if scoped in sessions[:index]:
            continue
        factory = scoped.session_factory
        bind = factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError(
                f"isolated(): the sessionmaker of session argument {index} must be bound to "
                f"an Engine, got bind={bind!r}; create it with sessionmaker(bind=engine) or "
                "call db.configure(bind=engine) first (for Flask-SQLAlchemy's db.session: "
                "wsgi_sqla.flask_sqlalchemy.isolated(app, db))"
            )
        if bind in factories:
            # Their savepoints would nest on the one connection, and releasing the
            # first session's savepoint would release the second's with it.
            raise ValueError(
                f"isolated(): session arguments {owners[bind]} and {index} are bound to the "
                f"same engine ({bind.url!r}); the savepoints of two sessions on one isolated "
                "connection would nest and their commits would fail. Isolate one scoped "
                "session per engine, or reset the schema instead (reset_schema())"
            )
        factories[bind] = factory
        owners[bind] = index
    return factories


def restore(factory: sessionmaker[Any], saved: dict[str, Any]) -> None:
    factory.kw.clear()
    factory.kw.update(saved)


@contextlib.contextmanager
def outer_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection of ``engine`` inside a transaction that is always rolled back."""
    with engine.connect() as connection:
        restore_driver = _sqlite_begin_workaround(connection)
        try:
            outer = connection.begin()
            if restore_driver is not None:
                connection.exec_driver_sql("BEGIN")
            try:
                yield connection
            finally:
                outer.rollback()
        finally:
            if restore_driver is not None:
                restore_driver()


def _sqlite_begin_workaround(connection: Connection) -> Callable[[], None] | None:
    """Make a pysqlite connection leave BEGIN to us; return how to undo that, or ``None``.

    In its legacy mode (the default), ``sqlite3`` emits BEGIN only before DML,
    so a SAVEPOINT issued first would run outside any transaction and its
    RELEASE would commit for good.
    """
    if connection.dialect.name != "sqlite" or connection.dialect.driver != "pysqlite":
        return None
    driver = cast("sqlite3.Connection", connection.connection.driver_connection)
    autocommit = getattr(driver, "autocommit", _SQLITE_LEGACY)
    if autocommit is False:
        return None  # PEP 249 mode: the driver keeps a transaction open by itself.
    if autocommit != _SQLITE_LEGACY:
        raise ValueError(
            "isolated(): the sqlite3 connection has autocommit=True, in which the driver "
            "ignores rollback(), so the outer transaction could not be undone; use the "
            "default (legacy) mode or connect_args={'autocommit': False}"
        )
    isolation_level = driver.isolation_level
    driver.isolation_level = None

    def restore() -> None:
        driver.isolation_level = isolation_level

    return restore


@dataclass
class RoundTrips:
    """Round trips one engine made while a :func:`count_round_trips` block ran.

    Each field counts one kind of message exchanged with the database, as
    SQLAlchemy reports it, so the counts are exact and the same on every run
    and can be asserted (``assert counts == RoundTrips(...)``):

    * ``statements``: cursor executions (``before_cursor_execute``);
    * ``begin``, ``commit``, ``rollback``: transactions begun, committed and
      rolled back on the engine's connections (a driver may send BEGIN lazily
      with the first statement, but there is one per transaction either way);
    * ``checkouts``: connections taken from the pool;
    * ``resets``: connections the pool reset on their return to it (its
      ``reset_on_return`` rollback: a real ROLLBACK on drivers that send one
      unconditionally, such as PyMySQL); not counted when closing the
      :class:`~sqlalchemy.Connection` had already rolled back an open
      transaction.
    """

    statements: int = 0
    begin: int = 0
    commit: int = 0
    rollback: int = 0
    checkouts: int = 0
    resets: int = 0


@contextlib.contextmanager
def count_round_trips(engine: Engine) -> Iterator[RoundTrips]:
    """Count the round trips ``engine`` makes while the block runs, from any thread.

    Yields a :class:`RoundTrips` that fills in as the block runs; the
    listeners are removed when the block ends, however it ends. Connect once
    before the block if the dialect's first-connect queries must not count.
    Nest the blocks to count several engines.
    """
    counts = RoundTrips()

    def statement(*_args: Any) -> None:
        counts.statements += 1

    def begin(_connection: Any) -> None:
        counts.begin += 1

    def commit(_connection: Any) -> None:
        counts.commit += 1

    def rollback(_connection: Any) -> None:
        counts.rollback += 1

    def checkout(*_args: Any) -> None:
        counts.checkouts += 1

    def reset(_dbapi_connection: Any, _record: Any, state: Any) -> None:
        if not state.transaction_was_reset:
            counts.resets += 1

    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (engine, "before_cursor_execute", statement),
        (engine, "begin", begin),
        (engine, "commit", commit),
        (engine, "rollback", rollback),
        (engine.pool, "checkout", checkout),
        (engine.pool, "reset", reset),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    try:
        yield counts
    finally:
        for target, name, listener in listeners:
            event.remove(target, name, listener)
