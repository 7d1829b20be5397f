"""Units of work around a block of code: scripts, CLI commands, shared helpers.

A web request gets its unit of work from :class:`~wsgi_sqla.SessionMiddleware`.
Code that runs outside any request (a cron script, a Flask CLI command, a data
fix run by hand) gets the same rules from :class:`transaction`: commit when the
block ends normally, roll back when it raises, remove the sessions in every
case, run the after-commit hooks once the data is there. The rules themselves
live in :class:`~wsgi_sqla.UnitOfWork`, and so does the choice between
starting a unit of its own and joining the one already running.

Joining is what makes a decorated helper safe to call from anywhere. Called
from a script it is its own unit and commits; called from a view, or from
another ``transaction()``, it becomes part of the unit already running and
commits nothing early: the request (or the outermost block) decides, once,
for all the work. A joined block is *not* a savepoint. When it raises, the
exception propagates unchanged and nothing else happens: the outer unit is
neither rolled back nor marked for rollback behind its owner's back, so its
usual rules apply: an uncaught exception rolls the request back, and a view
that catches a database error and answers 200 gets a 500 instead, with
nothing committed (:class:`~wsgi_sqla.RejectedWorkError`), since the database
rejected part of its work. Code that needs to undo part of a unit and carry
on uses ``Session.begin_nested()``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.orm import scoped_session
from typing_extensions import Never

from ._owners import own_sessions, refuse_removed
from ._replicas import Replicas, check_replicas
from ._unit import UnitOfWork, unit_of_work

__all__ = ["transaction"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class transaction:  # lower case: used like a function, as contextlib.suppress is
    """Run a block, or every call of a function, as one unit of work over ``sessions``.

    As a context manager::

        with transaction(db):
            User(name="ann").save()

    and as a decorator::

        @transaction(db)
        def import_users(names: list[str]) -> None: ...

    Guarantees, when no unit of work is running yet:

    * the sessions are committed when the block ends normally (flushing all
      of them first when there are several), and rolled back when it raises;
      the exception propagates unchanged;
    * :func:`~wsgi_sqla.force_rollback` inside the block rolls back without
      an exception;
    * the sessions are removed in every case, so no connection stays
      checked out, and hooks registered with :func:`~wsgi_sqla.after_commit`
      run once after the commit, never after a rollback;
    * a session left in the registry by code that ran outside any unit is
      rolled back and removed first (with a
      :class:`~wsgi_sqla.StaleSessionWarning`), never committed by this block;
    * in a forked child (a ``multiprocessing`` worker) the block never uses a
      connection of the parent: the sessions' engines are made
      :func:`~wsgi_sqla.fork_safe`.

    When ``COMMIT`` loses its connection, the block returns normally if
    the unit can establish that it committed (see
    :func:`~wsgi_sqla.resolve_in_doubt`), raises
    :class:`~wsgi_sqla.NotCommittedError` if it did not, and
    :class:`~wsgi_sqla.CommitInDoubtError` if nothing can tell.

    Inside a running unit of work (a request wrapped by the middleware, an
    enclosing ``transaction()``, a Celery task) the block joins that unit:
    it commits, rolls back and removes nothing itself, its sessions are
    added to the running unit, and an exception it raises propagates without
    any other effect (the block is not a savepoint).

    A block runs on the primaries its sessions are bound to. Given
    ``replicas=Replicas({db: [replica_engine, ...]})`` (the object the
    middleware is given), a block of its own runs instead on one healthy
    replica within the replicas' ``max_lag``,
    in a read-only transaction (a write raises
    :class:`~wsgi_sqla.ReplicaWriteError` and nothing is written), and on the
    primary when no replica qualifies: for a report or an export that must
    not load the primary. A block that joins a running unit keeps that
    unit's route.

    ``with transaction(db) as unit`` gives the :class:`~wsgi_sqla.UnitOfWork`
    the block runs in (the outer one when it joined). A ``transaction``
    object serves one ``with`` block at a time; a decorated function may be
    called from many threads at once and recursively.

    :raises TypeError: when no session is given, or one is not a
        :class:`sqlalchemy.orm.scoped_session`; when decorating a coroutine
        or generator function, whose body would run after the block ended;
        when ``replicas`` is not a :class:`~wsgi_sqla.Replicas`, or for a
        keyword removed before 1.0 (the message gives its new spelling).
    :raises RuntimeError: when ``__exit__`` is called on a block that was
        never entered, or the object already runs a block.
    :raises ValueError: when a session is given twice.
    """

    __slots__ = ("_block", "_start", "sessions")

    def __init__(
        self,
        *sessions: scoped_session[Any],
        replicas: Replicas | None = None,
        **removed: Never,
    ) -> None:
        refuse_removed("transaction()", removed)
        self.sessions: tuple[scoped_session[Any], ...] = own_sessions(sessions, "transaction()")
        self._block: contextlib.AbstractContextManager[UnitOfWork] | None = None
        self._start: Callable[[tuple[scoped_session[Any], ...]], UnitOfWork] = UnitOfWork
        checked = check_replicas(replicas, "transaction()")
        if checked is not None:
            # The shared Replicas keeps its state: a block builds nothing of its own.
            self._start = functools.partial(
                checked.unit, replica_ok=True, what="transaction() block"
            )

    def __enter__(self) -> UnitOfWork:
        if self._block is not None:
            raise RuntimeError(
                "transaction(): this object is already running a block; write "
                "`with transaction(db):` at each block instead of reusing one object"
            )
        block = unit_of_work(self.sessions, self._start)
        unit = block.__enter__()
        self._block = block
        return unit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        block, self._block = self._block, None
        if block is None:
            raise RuntimeError(
                "transaction(): __exit__() was called on a block that was never entered; "
                "write `with transaction(db):` (or decorate a function with "
                "@transaction(db)) instead of calling __enter__/__exit__ by hand"
            )
        return block.__exit__(exc_type, exc, traceback)

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        if (
            inspect.iscoroutinefunction(func)
            or inspect.isgeneratorfunction(func)
            or inspect.isasyncgenfunction(func)
        ):
            raise TypeError(
                f"transaction(): cannot decorate {func.__qualname__!r}: it is a coroutine or "
                "generator function, whose body runs after the call returned, outside the "
                "unit of work; decorate a plain function, or use `with transaction(...)` "
                "inside the body"
            )
        sessions, start = self.sessions, self._start

        @functools.wraps(func)
        def in_transaction(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with unit_of_work(sessions, start):
                return func(*args, **kwargs)

        return in_transaction
