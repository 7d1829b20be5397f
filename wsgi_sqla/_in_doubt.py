"""A COMMIT in doubt, settled: ask the database, on a fresh connection, what became of it.

When the connection is lost after ``COMMIT`` was sent, the driver's error
proves nothing: the server may have committed and failed to answer, or never
got the message. :class:`~wsgi_sqla.UnitOfWork` then asks a *lookup* for the
truth, if the session that failed has one:

* committed: the unit goes on as if ``COMMIT`` had answered (the request
  gets the application's response, after-commit hooks run), and a WARNING
  says how it was resolved;
* not committed: nothing of that session is in the database; the unit rolls
  back and raises :class:`NotCommittedError`, which a
  :class:`~wsgi_sqla.Retry` runs again, since nothing happened;
* unknown (no lookup, or it could not tell): as without one,
  :class:`~wsgi_sqla.CommitInDoubtError`, logged as an unknown outcome.

Lookups come from two places, both settled by the same rule in the unit:

* :func:`~wsgi_sqla.resolve_in_doubt` on a PostgreSQL engine: a unit that
  wrote on it reads its transaction id just before ``COMMIT`` (one
  statement), and the lookup asks ``pg_xact_status`` (``txid_status``
  before PostgreSQL 13);
* a keyed request (the ``Idempotency-Key`` record written in the unit's own
  transaction) registers a lookup of its key with :func:`resolve_by`, which
  costs no statement before ``COMMIT``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from ._context import current
from ._owners import check_seconds
from ._rejected import CommitInDoubtError, first_line

if TYPE_CHECKING:
    from ._rejected import Ledger
    from ._unit import UnitOfWork

__all__ = [
    "Doubt",
    "Lookup",
    "NotCommittedError",
    "lookup",
    "resolve_by",
    "resolve_in_doubt",
    "settle",
    "sleep",
]

logger = logging.getLogger("wsgi_sqla")

#: ``lookup() -> (committed, how)``: ``True`` committed, ``False`` not, ``None`` unknown;
#: ``how`` says what was asked and what it answered, for the log.
Lookup = Callable[[], tuple[bool | None, str]]

#: How a lookup waits between two questions; the tests may replace it.
sleep: Callable[[float], object] = time.sleep


class NotCommittedError(Exception):
    """``COMMIT`` lost its connection, and the database says it did not take effect.

    Raised instead of :class:`~wsgi_sqla.CommitInDoubtError` when the unit
    could ask (:func:`~wsgi_sqla.resolve_in_doubt`, an idempotency key): the
    session's work is not in the database, so running the unit again is
    safe, and :class:`~wsgi_sqla.Retry` does so whatever its ``when`` says.
    The middleware answers it like any failed commit (500, nothing
    committed). :attr:`error` is the driver's error, also the ``__cause__``.
    """

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)  # only the message in args, as CommitInDoubtError
        #: The exception ``COMMIT`` raised (``None`` once rebuilt from a pickle).
        self.error: BaseException | None = error


class Doubt:
    """A unit's means of settling a COMMIT in doubt; made when it first needs one."""

    __slots__ = ("keyed", "marked", "wrote")

    def __init__(self) -> None:
        #: Lookups registered by keyed requests, by the session holding the key's record.
        self.keyed: dict[Session, Lookup] = {}
        #: Connections of :func:`resolve_in_doubt` engines on which the unit wrote.
        self.wrote: set[Connection] = set()
        #: The lookups of those connections' transactions, by the id read before COMMIT.
        self.marked: dict[Connection, Lookup] = {}


def _doubt(unit: UnitOfWork) -> Doubt:
    doubt: Doubt | None = getattr(unit, "_doubt", None)
    if doubt is None:
        doubt = unit._doubt = Doubt()
    return doubt


def resolve_by(unit: UnitOfWork, session: Session, lookup: Lookup) -> None:
    """Settle a COMMIT of ``session`` in doubt with ``lookup`` (run on a fresh connection).

    For a record written in ``session``'s transaction whose presence proves
    that transaction committed (an idempotency key). Preferred to the
    transaction id, which is then not read: no statement is added.
    """
    _doubt(unit).keyed[session] = lookup


def lookup(unit: UnitOfWork, session: Session, ledger: Ledger | None) -> Lookup | None:
    """How to settle ``session``'s COMMIT in doubt; ``None``: nothing can tell.

    A keyed lookup when one was registered; else the transaction id read
    before COMMIT when the session wrote on one connection of a
    :func:`resolve_in_doubt` engine.
    """
    doubt: Doubt | None = getattr(unit, "_doubt", None)
    if doubt is None:
        return None
    found = doubt.keyed.get(session)
    if found is not None or not doubt.marked or ledger is None:
        return found
    connections = [began.connection for began in ledger.began if began.session is session]
    if len(connections) != 1:
        return None  # several databases in one session: which COMMIT failed is not known
    return doubt.marked.get(connections[0])


def settle(session: Session, error: BaseException, lookup: Lookup | None) -> None:
    """``session``'s COMMIT raised ``error``, in doubt: return if ``lookup`` says it committed.

    Committed: a WARNING says how it was resolved, the failed session's
    transaction is ended locally, and the caller carries on as committed.
    Not committed: :class:`NotCommittedError`. Unknown (no lookup, or it
    could not tell): :class:`~wsgi_sqla.CommitInDoubtError`.
    """
    lost = first_line(error)
    outcome, how = _ask(lookup)
    if outcome:
        logger.warning(
            "COMMIT lost its connection (%s); resolved: committed (%s), the unit carries "
            "on as committed",
            lost,
            how,
        )
        try:
            session.rollback()  # nothing to undo on the server: ends the transaction locally
        except Exception:
            logger.debug("rollback after a COMMIT resolved as committed failed", exc_info=True)
        return
    if outcome is False:
        raise NotCommittedError(
            f"COMMIT lost its connection ({lost}); resolved: not committed ({how}), so "
            "nothing of the unit's work is in the database: it is rolled back and may be "
            "run again",
            error,
        ) from error
    raise CommitInDoubtError(
        f"COMMIT lost its connection ({lost}); the outcome is unknown ({how}): the work "
        "may or may not be in the database, and it is not run again",
        error,
    ) from error


def _ask(lookup: Lookup | None) -> tuple[bool | None, str]:
    if lookup is None:
        return None, "nothing to ask"
    try:
        return lookup()
    except Exception as exc:
        logger.exception("asking what became of a COMMIT in doubt failed")
        return None, f"the lookup raised {first_line(exc)}"


# -- PostgreSQL: the transaction id and pg_xact_status --------------------------------------

_options: weakref.WeakKeyDictionary[Engine, _XactStatus] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def resolve_in_doubt(engine: Engine, *, wait: float = 5.0) -> Engine:
    """PostgreSQL: settle a COMMIT in doubt on ``engine`` with ``pg_xact_status``; returns it.

    Every unit of work over ``engine`` (requests, ``transaction()`` blocks,
    Celery tasks) that wrote on it reads its transaction id just before
    ``COMMIT``, with ``pg_current_xact_id_if_assigned()``
    (``txid_current_if_assigned()`` before PostgreSQL 13). If ``COMMIT`` then
    loses its connection, a fresh connection asks ``pg_xact_status``
    (``txid_status``) what became of that transaction:

    * ``committed``: the unit carries on as committed (the request gets the
      application's response, after-commit hooks run), logged as a WARNING;
    * ``aborted``: nothing was committed; :class:`~wsgi_sqla.NotCommittedError`
      is raised (a request answers 500, or runs again under
      :class:`~wsgi_sqla.Retry`);
    * ``in progress`` (the server has not yet seen the connection drop, or
      waits for a synchronous standby): asked again, backing off, for up to
      ``wait`` seconds, then unknown;
    * no answer (the id is older than the commit log the server keeps, or
      the server cannot be reached within ``wait``): unknown, as without
      the option: :class:`~wsgi_sqla.CommitInDoubtError`.

    Cost: one statement (one round trip) before ``COMMIT`` on each unit that
    wrote on ``engine``; none on a unit that only read (a ``SELECT`` without
    ``FOR UPDATE``/``FOR SHARE``) or did not use it, and none for a keyed
    request, whose key settles it instead. Only when ``COMMIT`` is in doubt
    does the lookup cost more. Off by default: no way to learn the id
    without that round trip was found. A ``SELECT`` of a function that
    writes is not seen as a write: its doubt stays unknown.

    Works behind PgBouncer in transaction mode: the id is read inside the
    transaction, and the status is asked by one statement on any server
    connection. The id is 64 bits (an epoch and the 32-bit xid), so
    wrap-around never confuses two transactions. PostgreSQL 10 to 12 use
    the ``txid_*`` functions; before 10 nothing is read and the doubt stays
    unknown. Calling it again on the same engine changes ``wait``.

    :raises TypeError: when ``engine`` is not a :class:`sqlalchemy.Engine`,
        or ``wait`` is not a number of seconds.
    :raises ValueError: when ``engine`` is not PostgreSQL, or ``wait`` is negative.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"resolve_in_doubt(): needs a sqlalchemy Engine, got {engine!r}")
    if engine.dialect.name != "postgresql":
        raise ValueError(
            "resolve_in_doubt(): needs a PostgreSQL engine (pg_xact_status); got "
            f"{engine.dialect.name!r}: on other databases, an idempotency key settles "
            "a COMMIT in doubt"
        )
    seconds = check_seconds(wait, "wait", "resolve_in_doubt()")
    if not seconds >= 0:
        raise ValueError(f"resolve_in_doubt(): wait must be >= 0 seconds, got {wait!r}")
    with _lock:
        option = _options.get(engine)
        if option is None:
            option = _options[engine] = _XactStatus(engine, seconds)
            event.listen(engine, "after_cursor_execute", option.executed)
            event.listen(engine, "commit", option.committing)
        option.wait = seconds
    return engine


def _keyed(unit: Any, doubt: Doubt, connection: Connection) -> bool:
    """Whether a session with a keyed lookup began its transaction on ``connection``."""
    ledger: Ledger | None = unit._ledger
    return ledger is not None and any(
        began.connection is connection and began.session in doubt.keyed for began in ledger.began
    )


def _writes(context: Any, statement: str) -> bool:
    """Whether a statement may have assigned its transaction an id: anything but a plain SELECT."""
    if context is not None and (context.isinsert or context.isupdate or context.isdelete):
        return True
    head = statement.lstrip()[:6].upper()
    return head != "SELECT" or " FOR " in statement.upper()


class _XactStatus:
    """The option on one engine: its listeners, and the queries by server version."""

    __slots__ = ("__weakref__", "engine", "wait")

    def __init__(self, engine: Engine, wait: float) -> None:
        self.engine = weakref.proxy(engine)  # the engine keeps its listeners, not the reverse
        self.wait = wait

    # listeners: on this engine only; they do nothing while no unit runs

    def executed(
        self,
        connection: Connection,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        context: Any,
        _executemany: bool,
    ) -> None:
        """After a statement: remember the connection if it wrote in a unit."""
        unit = current.get()
        if unit is None or not _writes(context, statement):
            return
        doubt = _doubt(unit)
        doubt.wrote.add(connection)

    def committing(self, connection: Connection) -> None:
        """Just before COMMIT: read the id of a transaction that wrote in a unit."""
        unit = current.get()
        doubt: Doubt | None = getattr(unit, "_doubt", None)
        if doubt is None or connection not in doubt.wrote:
            return
        doubt.wrote.discard(connection)
        if doubt.keyed and _keyed(unit, doubt, connection):
            return  # the key's record settles it, at no cost
        version: tuple[Any, ...] = connection.dialect.server_version_info or (0,)
        if version < (10,):
            return  # no txid_status: the doubt stays unknown
        modern = version >= (13,)
        xid = connection.exec_driver_sql(
            "SELECT CAST(pg_current_xact_id_if_assigned() AS text)"
            if modern
            else "SELECT CAST(txid_current_if_assigned() AS text)"
        ).scalar()
        if xid is None:
            return  # nothing written after all: a lost COMMIT loses nothing of it

        def lookup() -> tuple[bool | None, str]:
            return self.status(str(xid), modern)

        doubt.marked[connection] = lookup

    def status(self, xid: str, modern: bool) -> tuple[bool | None, str]:
        """Ask on a fresh connection whether ``xid`` committed; again while in progress."""
        ask = (
            "SELECT pg_xact_status(CAST(:xid AS xid8))"
            if modern
            else "SELECT txid_status(CAST(:xid AS bigint))"
        )
        function = "pg_xact_status" if modern else "txid_status"
        deadline = time.monotonic() + self.wait
        delay = 0.01
        while True:
            try:
                with self.engine.connect() as connection:
                    state = connection.execute(text(ask), {"xid": xid}).scalar()
            except Exception as exc:
                state = f"not asked ({type(exc).__name__}: {str(exc).strip()[:200]})"
            how = f"{function}({xid}) = {state!r}"
            if state == "committed":
                return True, how
            if state == "aborted":
                return False, how
            if state is None:
                return None, f"{how}: the id is older than the commit log the server keeps"
            if time.monotonic() >= deadline:
                return None, f"{how} after {self.wait:g} s"
            sleep(delay)
            delay = min(delay * 2, 0.5)
