"""The unit of work: the one place where commit, rollback and cleanup happen.

A web request, a ``transaction()`` block, a Celery task and a test all follow
the same rules, and all of them get those rules from :class:`UnitOfWork`:

* starting a unit rolls back and removes any session left over from an
  earlier one (:class:`StaleSessionWarning`), so nothing stale is committed;
* only sessions that were actually created are touched, so a unit that never
  used the database costs no Session, no connection and no SQL statement;
* whether the unit commits is decided in one place, :meth:`UnitOfWork.decide`:
  an outcome forced by the application (:func:`force_commit`,
  :func:`force_rollback`) wins over the owner's rule (the middleware's
  status and veto, a block that ended normally);
* committing several sessions flushes all of them first, so that ordinary
  errors (constraints checked at flush, bad SQL) surface before anything is
  made permanent, then commits them in order; if any commit fails, every
  session is rolled back and the error propagates;
* rollback and removal never mask the error that led to them: their own
  failures are logged and the cleanup goes on with the next session;
* after-commit hooks run once, after every session committed, and are
  dropped when the unit rolls back.

The unit that is running is kept in a :class:`contextvars.ContextVar`, so
application code can reach it without a session or request being passed
around (:func:`after_commit`, :func:`force_commit`, :func:`force_rollback`).
:func:`unit_of_work` holds the rule that nested blocks share: join the unit
that is running, or start one of their own.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, overload

from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.orm import scoped_session

from ._context import current, quiet_leftovers
from ._fork import adopt_pools
from ._in_doubt import Doubt, NotCommittedError, lookup, settle
from ._registry import is_live, remove_one, rollback_one
from ._rejected import (
    CommitInDoubtError,
    Ledger,
    RejectedWorkError,
    check_flushed,
    in_doubt,
    refused_flush,
)
from ._telemetry import COMMIT_FAILED, IN_DOUBT, ROLLED_BACK, failed, tracing, unit_facts

if TYPE_CHECKING:
    from ._telemetry import Record

__all__ = [
    "Outcome",
    "StaleSessionWarning",
    "UnitOfWork",
    "after_commit",
    "current",
    "current_unit",
    "force_commit",
    "force_rollback",
    "unit_of_work",
]

logger = logging.getLogger("wsgi_sqla")

Outcome = Literal["commit", "rollback"]
"""What an application can force a unit to do, whatever its owner's rule says."""

_P = ParamSpec("_P")
_Hook = tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]


class StaleSessionWarning(RuntimeWarning):
    """A session from an earlier unit of work was still in the registry.

    This happens when a WSGI server never called ``close()`` on a response, or
    when code used a scoped session outside any unit of work and did not
    remove it. The stale session is rolled back and removed before the new
    unit starts, so nothing it held can be committed by accident.
    """


class UnitOfWork:
    """Commit-or-rollback bookkeeping for one request, block or task::

        with UnitOfWork((db,)).running():   # what transaction(db) does
            User(name="ann").save()

    Its owner (the middleware, ``transaction()``, the Celery base) creates
    it, which starts it, asks :meth:`decide` whether to commit, and ends it
    with one of these verbs:

    * :meth:`commit`: flush and commit every live session (all rolled back
      if one fails);
    * :meth:`rollback`: roll back every live session, drop pending hooks;
    * :meth:`remove`: close every live session and clear its registry;
    * :meth:`end`: :meth:`remove`, then run the hooks of committed work;
    * :meth:`running`: all of the above around a block of code.
    """

    __slots__ = (
        "_doubt",
        "_forced",
        "_ledger",
        "_owner",
        "_pending_hooks",
        "_ready_hooks",
        "_trace",
        "sessions",
    )

    #: How a COMMIT in doubt is settled (_in_doubt.py). Unset until a lookup may be
    #: needed, so that a unit which never needs one does not even store a ``None``.
    _doubt: Doubt
    #: Set only when not "request", and while telemetry is on: a plain request stores neither.
    _owner: str
    _trace: Record

    def __init__(self, sessions: tuple[scoped_session[Any], ...]) -> None:
        """Start a unit over ``sessions``, discarding sessions left by an earlier one.

        In a process forked since the pools of :func:`~wsgi_sqla.fork_safe`
        engines were made, those inherited pools are dropped first, before
        anything is checked out.

        A session still in a registry is rolled back and removed, with a
        :class:`StaleSessionWarning`: it belongs to no unit, so committing it
        with this one could make an earlier request's work permanent.
        """
        adopt_pools()
        self.sessions: tuple[scoped_session[Any], ...] = sessions
        self._forced: Outcome | None = None
        self._pending_hooks: list[_Hook] | None = None
        self._ready_hooks: list[_Hook] | None = None
        #: What the sessions began on and what the database rejected; made at the first begin.
        self._ledger: Ledger | None = None
        if tracing is not None:
            self._trace = tracing.start()
        for scoped in sessions:
            if is_live(scoped):
                if quiet_leftovers.get() and _holds_nothing(scoped.registry()):
                    remove_one(scoped)
                    continue
                warnings.warn(
                    "wsgi_sqla: a session was still in the registry when a new unit of work "
                    "began (a server that never called close() on a response, or code that "
                    "used the scoped session outside any unit of work); it is rolled back "
                    "and removed",
                    StaleSessionWarning,
                    stacklevel=3,
                )
                rollback_one(scoped)
                remove_one(scoped)

    # -- the decision -----------------------------------------------------

    def force(self, outcome: Outcome) -> None:
        """Make :meth:`decide` answer ``outcome`` whatever the owner's rule says.

        The last call wins. Only an exception reaching the owner overrides
        it: an owner never commits after one.
        """
        self._forced = outcome

    @property
    def forced(self) -> Outcome | None:
        """The outcome :meth:`force` set, or ``None`` when the owner's rule applies."""
        return self._forced

    def commits_late_work(self, cleanly: bool) -> bool:
        """Whether work done after the decision (while a body streamed) is committed.

        Only when the unit committed at its decision and its owner says the
        work after it ended ``cleanly`` (the body was read to its end); a
        :func:`force_rollback` made meanwhile still rolls it back.
        """
        return cleanly and self._forced != "rollback"

    @overload
    def decide(self) -> tuple[bool, str]: ...

    @overload
    def decide(
        self, vetoed: Callable[_P, bool], *args: _P.args, **kwargs: _P.kwargs
    ) -> tuple[bool, str]: ...

    def decide(
        self, vetoed: Callable[..., bool] | None = None, *args: Any, **kwargs: Any
    ) -> tuple[bool, str]:
        """Whether this unit commits, and why: ``(commit, reason)``.

        The one rule every owner applies once its work ended without an
        exception: an outcome forced with :meth:`force` wins; otherwise the
        unit commits unless ``vetoed(*args, **kwargs)`` (the owner's rule, called only
        then) returns true. Without ``vetoed`` it commits. The reason is
        ``"force_commit"``, ``"force_rollback"``, ``"veto"`` (``vetoed``
        decided) or ``"ended"``.
        """
        forced = self._forced
        if forced is not None:
            decision = (forced == "commit", f"force_{forced}")
        elif vetoed is None:
            decision = (True, "ended")
        elif vetoed(*args, **kwargs):
            decision = (False, "veto")
        else:
            decision = (True, "veto")
        if tracing is not None:
            tracing.decided(self._trace, *decision)
        return decision

    # -- the running unit -------------------------------------------------

    def join(self, sessions: tuple[scoped_session[Any], ...]) -> None:
        """Make this unit also responsible for ``sessions`` (nested blocks)."""
        missing = tuple(s for s in sessions if s not in self.sessions)
        if missing:
            self.sessions += missing

    def busy(self) -> bool:
        """``True`` when a live session is in a transaction or a hook waits for a commit.

        Work done after the decision (while a body streamed) is settled only
        then; otherwise there is nothing to commit or roll back, only to end.
        """
        if self._pending_hooks:
            return True
        for scoped in self.sessions:
            if is_live(scoped) and scoped.registry().in_transaction():
                return True
        return False

    def idle(self) -> bool:
        """``True`` when no session is live and no hook is waiting: nothing to end."""
        if self._pending_hooks or self._ready_hooks:
            return False
        # A loop, not any(): 2.3k instructions against 4.1k for one session (callgrind).
        for scoped in self.sessions:  # noqa: SIM110
            if is_live(scoped):
                return False
        return True

    # -- the rules --------------------------------------------------------

    def _owns(self, session: object) -> scoped_session[Any] | None:
        """The registry of this unit whose current session is ``session``, if any."""
        for scoped in self.sessions:
            if is_live(scoped) and scoped.registry() is session:
                return scoped
        return None

    def commit(self) -> bool:
        """Flush, then commit, every live session; on failure roll all back and re-raise.

        Sessions are committed in the order they were given. When a commit
        fails after an earlier session's commit succeeded, the earlier one
        stays committed (there is no two-phase commit across databases) and
        the failure is logged naming both.

        Returns ``False``, after a WARNING, when a session this unit began
        work in was removed by someone else before the decision: its work
        was discarded, not committed.

        When ``COMMIT`` lost its connection, the session's lookup (an
        idempotency key, :func:`~wsgi_sqla.resolve_in_doubt`) is asked on a
        fresh connection: if it committed, the unit carries on as committed
        (logged as a WARNING saying how).

        :raises RejectedWorkError: before committing anything, when the
            database rejected part of the unit's work and the application
            went on (logged once, as an ERROR).
        :raises NotCommittedError: when ``COMMIT`` lost its connection and the
            lookup says it did not take effect (logged once, as an ERROR).
        :raises CommitInDoubtError: when ``COMMIT`` lost its connection and
            nothing can tell its outcome (logged once, as an ERROR).
        """
        live = []
        # A loop, not a list comprehension: 4.2k instructions against 5.0k (callgrind).
        for scoped in self.sessions:
            if is_live(scoped):
                live.append(scoped.registry())
        ledger = self._ledger
        whole = ledger is None or ledger.kept()
        if not live and not self._pending_hooks:
            if tracing is not None:
                tracing.committed(self._trace, whole)
            return whole
        committed = 0
        try:
            if len(live) > 1:
                # Nothing is committed before every session is known to be whole.
                for session in live:
                    check_flushed(session, ledger)
                for session in live:
                    session.flush()
            for session in live:
                if session.in_transaction():
                    try:
                        if tracing is None:
                            session.commit()
                        else:
                            tracing.operation(self._trace, "COMMIT", session, session.commit)
                    except BaseException as error:
                        if not in_doubt(error):
                            raise
                        # Carries on if it committed after all; raises otherwise.
                        settle(session, error, lookup(self, session, ledger))
                committed += 1
        except BaseException as error:
            if committed:
                logger.error(
                    "commit failed after %d of %d sessions had committed; those stay "
                    "committed, the others are rolled back",
                    committed,
                    len(live),
                    extra=unit_facts(self, COMMIT_FAILED, "exception"),
                )
            self.rollback()
            if isinstance(error, PendingRollbackError):
                # A flush failed and the application went on (the single-session path
                # leaves this check to SQLAlchemy, at no cost when nothing failed).
                error = refused_flush(ledger)
                failed(self, error, ROLLED_BACK, "rejected", "not committed: %s")
                raise error from None
            if isinstance(error, RejectedWorkError):
                failed(self, error, ROLLED_BACK, "rejected", "not committed: %s")
            elif isinstance(error, CommitInDoubtError):
                failed(self, error, IN_DOUBT, "connection_lost", "%s")
            elif isinstance(error, NotCommittedError):
                failed(self, error, COMMIT_FAILED, "connection_lost", "%s")
            elif tracing is not None:  # an ordinary error: its owner reports it
                tracing.failed(self._trace, COMMIT_FAILED, "exception", error)
            raise
        if self._pending_hooks:
            if self._ready_hooks is None:
                self._ready_hooks = []
            self._ready_hooks.extend(self._pending_hooks)
            self._pending_hooks = None
        if tracing is not None:
            tracing.committed(self._trace, whole)
        return whole

    def rollback(self) -> None:
        """Roll back every live session and drop hooks of uncommitted work."""
        self._pending_hooks = None
        if tracing is not None:
            tracing.rollback(self)
            return
        for scoped in self.sessions:
            if is_live(scoped):
                rollback_one(scoped)

    def remove(self) -> None:
        """Close every live session and clear it from its registry."""
        for scoped in self.sessions:
            if is_live(scoped):
                remove_one(scoped)

    def end(self) -> None:
        """Remove the sessions, then run the after-commit hooks of committed work.

        Hooks run once each, in order, after the sessions were removed and
        with no unit of work running: a hook that needs the database opens
        its own ``transaction()``, and whatever a hook leaves in a scoped
        session without one is rolled back and removed after the hooks. A
        hook that raises is logged with its traceback; the others still run
        and nothing propagates, since the work they follow is committed.
        """
        try:
            self.remove()
        finally:
            hooks, self._ready_hooks = self._ready_hooks, None
            if hooks:
                token = current.set(None)
                try:
                    for callback, args, kwargs in hooks:
                        try:
                            callback(*args, **kwargs)
                        except Exception:
                            logger.exception(
                                "after-commit hook %r raised; the commit stands", callback
                            )
                finally:
                    current.reset(token)
                    self.remove()
            if tracing is not None:
                tracing.end(self)

    @contextlib.contextmanager
    def running(self) -> Iterator[UnitOfWork]:
        """Run a block as this unit: commit if it ends normally, roll back if it raises.

        The exception propagates unchanged; :func:`force_rollback` inside the
        block rolls back without one. The sessions are removed in every case.
        """
        token = current.set(self)
        try:
            try:
                yield self
            except BaseException:
                self.rollback()
                raise
            commit, _reason = self.decide()
            if commit:
                self.commit()
            else:
                self.rollback()
        finally:
            current.reset(token)
            self.end()

    def add_hook(
        self, callback: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Register ``callback(*args, **kwargs)`` to run after the next commit."""
        if self._pending_hooks is None:
            self._pending_hooks = []
        self._pending_hooks.append((callback, args, kwargs))


def _holds_nothing(session: Any) -> bool:
    """Whether ``session`` has no transaction and no pending change: closing it loses nothing."""
    return not (session.in_transaction() or session.new or session.dirty or session.deleted)


@contextlib.contextmanager
def unit_of_work(
    sessions: tuple[scoped_session[Any], ...],
    start: Callable[[tuple[scoped_session[Any], ...]], UnitOfWork] = UnitOfWork,
    owner: str = "transaction",
) -> Iterator[UnitOfWork]:
    """Join the running unit of work, or run a new one over ``sessions``.

    The rule :class:`~wsgi_sqla.transaction` and the Celery task base share:
    inside a running unit (a request, an enclosing block, a task) the block
    adds its sessions to that unit and commits nothing early; outside any,
    it starts a unit of its own, ``start(sessions)`` (a routed unit when the
    block may read from replicas), owned by ``owner`` (``"transaction"`` or
    ``"task"``), and runs it (:meth:`UnitOfWork.running`).
    """
    unit = current.get()
    if unit is not None:
        unit.join(sessions)
        yield unit
        return
    unit = start(sessions)
    unit._owner = owner
    with unit.running() as unit:
        yield unit


def current_unit() -> UnitOfWork | None:
    """The unit of work running in this context, or ``None``."""
    return current.get()


def _running(what: str) -> UnitOfWork:
    unit = current.get()
    if unit is None:
        raise RuntimeError(
            f"{what}: needs a running unit of work: call it inside a request wrapped by "
            "SessionMiddleware, a wsgi_sqla.transaction() block or a wsgi_sqla.celery task"
        )
    return unit


def after_commit(callback: Callable[..., object], /, *args: Any, **kwargs: Any) -> None:
    """Run ``callback(*args, **kwargs)`` once the running unit has committed.

    The callback runs after every session of the unit committed, and never if
    the unit rolls back. An exception it raises is logged and swallowed.

    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when no unit of work is running.
    """
    if not callable(callback):
        raise TypeError(f"after_commit(): needs a callable, got {callback!r}")
    _running("after_commit()").add_hook(callback, args, kwargs)


def force_commit() -> None:
    """Commit the running unit even though its status or rule says roll back.

    For a request: commit although the response status is 400 or above (a
    failed-login counter behind a 401). An exception that reaches the
    middleware still rolls back.

    :raises RuntimeError: when no unit of work is running.
    """
    _running("force_commit()").force("commit")


def force_rollback() -> None:
    """Roll back the running unit even though it would commit.

    For a request: roll back although the status is below 400 (a dry run
    that answers 200).

    :raises RuntimeError: when no unit of work is running.
    """
    _running("force_rollback()").force("rollback")
