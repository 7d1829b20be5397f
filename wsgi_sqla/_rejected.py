"""Work the database rejected: a unit that went on after a failed statement never commits.

The everyday way to "ignore duplicates" is to run the insert and swallow the
``IntegrityError``::

    session.execute(insert(Order).values(...))
    try:
        session.execute(insert(Tag).values(name="new"))   # may hit a unique key
    except IntegrityError:
        pass
    return "", 201

The databases disagree about what is left after that. SQLite and MariaDB
undo only the failed statement, so the order is committed. PostgreSQL
aborts the whole transaction at the failed statement and answers the final
``COMMIT`` with ``ROLLBACK``, without an error: the driver returns normally,
the client is told 201 and the order is gone. MariaDB's deadlock error rolls
back the whole transaction too, and lets the next statement start a new one,
so half of the work is committed. An application tested on SQLite passes
and loses data in production.

wsgi_sqla takes the strict reading on every database, the only one that is
right on all of them: **a unit whose database work was partly rejected
cannot commit.** When the database rejected a statement or a flush of the
unit's own transaction (not inside a savepoint the application opened), and
the application went on without undoing its work itself, the unit refuses
to commit with :class:`RejectedWorkError`: the request answers 500,
``transaction()`` raises, a task fails, and nothing of the unit is
committed. The ways of undoing on purpose keep working:

* a savepoint around the statement that may fail, ``with
  session.begin_nested(): ...``: its failure undoes the savepoint only, and
  the unit commits the rest;
* ``session.rollback()`` by the application: its own decision, after which
  new work commits as usual.

How it is seen, at no cost to a unit whose statements all succeed:

* a listener on the engines the package was given (``handle_error``, which
  SQLAlchemy calls only when a statement fails) records the error against
  the transaction level the session began at, unless a savepoint of the
  application's is open (errors that lose the whole transaction, a MariaDB
  deadlock or a lost connection, are recorded even then);
* the record counts while that transaction is still open, so a
  ``session.rollback()`` by the application forgets it;
* a flush that failed leaves the session's transaction inactive, which
  SQLAlchemy reports locally (``SessionTransaction.is_active``);
* on PostgreSQL the driver's own transaction status (psycopg and psycopg2
  keep it locally, no query) catches an aborted transaction that no
  listener saw, such as a statement run on the raw DBAPI connection.

The check runs before the unit commits, and before an explicit
``session.commit()`` of the application inside a unit, which on PostgreSQL
would otherwise roll back silently. It needs the scoped session's factory
to be a :class:`~sqlalchemy.orm.sessionmaker` (the usual case); with any
other factory only the failed-flush check applies.

:class:`CommitInDoubtError` is the other outcome a client must never see as
success or as a clean failure: ``COMMIT`` was sent and the connection was
lost before its answer, so nobody knows whether it took effect.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker

from ._context import current
from ._registry import is_live

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext, Transaction

logger = logging.getLogger("wsgi_sqla")

__all__ = [
    "CommitInDoubtError",
    "Ledger",
    "RejectedWorkError",
    "check_flushed",
    "first_line",
    "in_doubt",
    "refused_flush",
    "watch",
]

#: libpq's PQTRANS_INERROR: psycopg's and psycopg2's ``info.transaction_status``
#: for a transaction that a failed statement aborted.
_PQTRANS_INERROR = 3
_PG_DRIVERS = frozenset(("psycopg", "psycopg2"))
#: MySQL/MariaDB ER_LOCK_DEADLOCK: the server rolled back the whole transaction.
_MYSQL_DEADLOCK = 1213

_SAVEPOINT_HINT = (
    "to go on after an expected error, run the statement that may fail in a savepoint "
    "(`with session.begin_nested(): ...`), or call session.rollback() to start over"
)


class RejectedWorkError(Exception):
    """The database rejected part of a unit's work and the application went on.

    Raised instead of committing (the middleware answers 500,
    ``transaction()`` raises it, a task fails); nothing of the unit is
    committed. :attr:`error` is the first rejected statement's exception,
    or ``None`` when only the database's state showed it (a flush that
    failed for a reason raised outside SQL, a statement on the raw DBAPI
    connection).
    """

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        # Only the message in args: rebuilt from them (pickle, a Celery result),
        # the exception is still a RejectedWorkError, without its cause.
        super().__init__(message)
        #: The first exception the database raised for this unit's transaction.
        self.error: BaseException | None = error


class CommitInDoubtError(Exception):
    """``COMMIT`` failed in a way that does not tell whether it took effect.

    The connection was lost after ``COMMIT`` was sent: the database may have
    committed, or not. The unit's sessions are discarded, the error is
    logged as an unknown outcome, and no retry policy runs the work again
    (it may be in the database already). :attr:`error` is the driver's
    error, also the ``__cause__``.
    """

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)  # only the message in args, as RejectedWorkError
        #: The exception ``COMMIT`` raised (``None`` once rebuilt from a pickle).
        self.error: BaseException | None = error


def in_doubt(error: BaseException) -> bool:
    """Whether ``error``, raised by ``Session.commit()``, leaves the outcome unknown.

    Only a lost connection during ``COMMIT`` itself does (SQLAlchemy wraps
    it with no statement and marks the connection invalidated). An error
    the server answered, a serialization failure or a deferred constraint,
    proves the transaction aborted; so does a failed flush, which has a
    statement.
    """
    return (
        isinstance(error, DBAPIError) and error.connection_invalidated and error.statement is None
    )


def first_line(error: BaseException) -> str:
    """``error``'s class and the first line of its message, for a log line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class _Began:
    """One connection a session of the unit began on, and the level it began at."""

    __slots__ = ("aborted", "connection", "level", "scoped", "session")

    def __init__(
        self, scoped: scoped_session[Any], session: Session, connection: Connection
    ) -> None:
        self.scoped = scoped
        self.session = session
        self.connection = connection
        # Under isolated() the session's own transaction is a savepoint; else the root.
        self.level: Transaction | None = (
            connection.get_nested_transaction() or connection.get_transaction()
        )
        self.aborted: Any = None
        if connection.dialect.driver in _PG_DRIVERS:
            self.aborted = connection.connection.dbapi_connection


class Ledger:
    """What the database rejected of one unit's work, and what the unit began on."""

    __slots__ = ("began", "rejected")

    def __init__(self) -> None:
        self.began: list[_Began] = []
        #: (level, error): errors of the unit's own transaction levels, oldest first.
        self.rejected: list[tuple[Transaction | None, BaseException]] = []

    def record(self, context: ExceptionContext) -> None:
        """Record a failed statement if it was run on a connection of this unit."""
        connection = context.connection
        for began in self.began:
            if began.connection is connection:
                break
        else:
            return
        error = context.sqlalchemy_exception or context.original_exception
        assert connection is not None
        level = connection.get_nested_transaction() or connection.get_transaction()
        if level is began.level or context.is_disconnect or _loses_transaction(context):
            self.rejected.append((began.level, error))

    def check(self, session: Session) -> None:
        """Raise :class:`RejectedWorkError` if ``session``'s transaction lost work.

        Errors recorded on levels that have ended since (the application
        rolled back) no longer count.
        """
        for began in self.began:
            if began.session is not session:
                continue
            level = began.level
            for rejected_level, error in self.rejected:
                if rejected_level is level and level is not None and level.is_active:
                    raise _rejected(error)
            dbapi = began.aborted
            if (
                dbapi is not None
                and not began.connection.closed
                and int(dbapi.info.transaction_status) == _PQTRANS_INERROR
            ):
                raise _rejected(
                    self._latest(),
                    "PostgreSQL reports the transaction aborted by a failed statement",
                )

    def _latest(self) -> BaseException | None:
        return self.rejected[-1][1] if self.rejected else None

    def kept(self) -> bool:
        """``False``, after a WARNING, if a session the unit began in was removed meanwhile.

        Someone else (a framework's teardown, a ``remove()`` in the
        application) closed it and took it out of its registry before the
        unit decided: its work was discarded, not committed.
        """
        lost = 0
        for began in self.began:
            scoped = began.scoped
            if not is_live(scoped) or scoped.registry() is not began.session:
                lost += 1
        if lost:
            logger.warning(
                "a session of this unit of work was closed and removed by someone else "
                "before the unit decided (a framework teardown, a remove() in the "
                "application); its work was discarded, not committed"
            )
        return not lost


def _loses_transaction(context: ExceptionContext) -> bool:
    """An error after which the server has rolled back the whole transaction."""
    engine = context.engine
    if engine is None or engine.dialect.name not in ("mysql", "mariadb"):
        return False
    args: tuple[object, ...] = getattr(context.original_exception, "args", ())
    return bool(args) and args[0] == _MYSQL_DEADLOCK


def _rejected(error: BaseException | None, what: str | None = None) -> RejectedWorkError:
    if what is None:
        what = (
            f"the database rejected a statement ({first_line(error)})"
            if error is not None
            else "a flush failed"
        )
    return RejectedWorkError(
        f"{what}, and the application went on as if it had not: the unit of work is not "
        f"committed, since part of its work is lost; {_SAVEPOINT_HINT}",
        error,
    )


def refused_flush(ledger: Ledger | None) -> RejectedWorkError:
    """The refusal for a session whose flush failed, naming the last rejected statement."""
    return _rejected(ledger._latest() if ledger is not None else None, "a flush failed")


def check_flushed(session: Session, ledger: Ledger | None) -> None:
    """Raise :class:`RejectedWorkError` if ``session`` holds work that cannot commit.

    A flush that failed leaves the transaction inactive until the
    application rolls it back; anything else is the ledger's to say.
    """
    transaction: SessionTransaction | None = session.get_transaction()
    if transaction is not None and not transaction.is_active:
        raise refused_flush(ledger)
    if ledger is not None:
        ledger.check(session)


# -- the listeners ----------------------------------------------------------------------

_lock = threading.Lock()
_factories: weakref.WeakSet[sessionmaker[Any]] = weakref.WeakSet()
#: ids of the engines with the listener; an id leaves when its engine is collected.
_engines: set[int] = set()


def watch(sessions: Iterable[scoped_session[Any]]) -> None:
    """Follow what the database rejects of units over ``sessions``; idempotent.

    Listens on the sessions' own ``sessionmaker`` (its private subclass of
    Session, so no other session in the process is touched), and on each
    engine they begin a transaction on.
    """
    for scoped in sessions:
        factory = scoped.session_factory
        if not isinstance(factory, sessionmaker) or factory in _factories:
            continue
        with _lock:
            if factory in _factories:
                continue
            event.listen(factory, "after_begin", _after_begin)
            event.listen(factory, "before_commit", _before_commit)
            _factories.add(factory)


def _watch_engine(engine: Engine) -> None:
    with _lock:
        if id(engine) not in _engines:
            event.listen(engine, "handle_error", _handle_error)
            _engines.add(id(engine))
            weakref.finalize(engine, _engines.discard, id(engine))


def _after_begin(session: Session, _transaction: Any, connection: Connection) -> None:
    unit = current.get()
    if unit is None:
        return
    scoped = unit._owns(session)
    if scoped is None:
        return
    engine = connection.engine
    if id(engine) not in _engines:  # a set of ids: a WeakSet look-up builds a weakref
        _watch_engine(engine)
    ledger = unit._ledger
    if ledger is None:
        ledger = unit._ledger = Ledger()
    ledger.began.append(_Began(scoped, session, connection))


def _before_commit(session: Session) -> None:
    unit = current.get()
    if unit is None or session.in_nested_transaction():
        return
    if unit._ledger is not None:
        unit._ledger.check(session)


def _handle_error(context: ExceptionContext) -> None:
    if context.connection is None or getattr(context, "is_pre_ping", False):
        return
    unit = current.get()
    if unit is None:
        return
    if unit._ledger is not None:
        unit._ledger.record(context)
