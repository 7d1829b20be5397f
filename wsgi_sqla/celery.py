"""Celery tasks as units of work: commit on success, roll back on any exception.

Install with the ``celery`` extra (``pip install wsgi_sqla[celery]``). A task
whose base is :class:`SessionTask` runs its body exactly like a request or a
:class:`~wsgi_sqla.transaction` block, through the same
:class:`~wsgi_sqla.UnitOfWork`: commit when the body returns, roll back
when it raises, remove the sessions always, run after-commit hooks once the
commit is done.

"Any exception" includes Celery's own control-flow exceptions: ``self.retry()``
raises :class:`celery.exceptions.Retry`, so an attempt that asks for a retry
leaves nothing behind and the next attempt starts from the committed state;
the same goes for ``autoretry_for``, ``Ignore`` and ``Reject``. (The pattern
this package grew out of committed in a ``finally:`` block, so a failed
attempt's half-done work was committed: exactly what this module prevents.)

The base learns its sessions from the class attribute ``sessions``, checked
when the class is defined; :func:`task_base` builds such a class in one line.
A task on a base without sessions raises :class:`TypeError` when it is
called, instead of running without a unit of work.

A task called directly (``add_user(...)``, or ``.apply()``/eager mode) inside
a running unit of work, for instance from a view, joins that unit like a
nested ``transaction()`` does. A task sent to a worker always runs as a unit
of its own; to send it only once the data it needs is committed, enqueue it
from an after-commit hook: ``after_commit(send_welcome.delay, user.id)``.

Read replicas. A task runs on the primary unless its base names
``replicas`` (``task_base(db, replicas=replicas)``, the
:class:`~wsgi_sqla.Replicas` the middleware is given); then each
call runs on a healthy replica, read-only, like a GET. A task enqueued from an
after-commit hook of a unit that wrote (a POST whose view called
``after_commit(send_welcome.delay, user.id)``) carries that commit's position
in its message header ``wsgi_sqla_positions``, and runs on a replica only once
the replica has replayed it, on the primary otherwise: the worker, which
often starts a few milliseconds after the commit, reads the row the request
wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, TypeVar

from sqlalchemy.orm import scoped_session
from typing_extensions import Never

try:
    from celery import Task
except ModuleNotFoundError as _missing:
    if _missing.name != "celery":  # Celery is there but broken: its own error says more
        raise
    raise ModuleNotFoundError(
        'wsgi_sqla.celery needs Celery, which is not installed: pip install "wsgi_sqla[celery]"',
        name="celery",
    ) from _missing

from ._once import TaskRuns, run_once, task_key, task_runs
from ._owners import check_sessions, own_sessions, refuse_removed
from ._replicas import Replicas, check_replicas, committed_positions
from ._unit import UnitOfWork, unit_of_work

__all__ = ["POSITIONS_HEADER", "SessionTask", "TaskRuns", "task_base", "task_runs"]

#: The task message header that carries the positions of the commit it follows.
POSITIONS_HEADER = "wsgi_sqla_positions"
#: Class attributes of a SessionTask removed before 1.0 (their spelling: REMOVED_KEYWORDS).
_REMOVED = ("replica_max_lag",)

_P = ParamSpec("_P")
_R_co = TypeVar("_R_co", covariant=True)


class SessionTask(Task[_P, _R_co]):
    """A Celery task base that runs every call of the task as one unit of work.

    Configure it by subclassing::

        class DbTask(SessionTask):
            sessions = (db,)

        @celery_app.task(base=DbTask, bind=True, max_retries=3)
        def charge(self, order_id: int) -> None: ...

    or with ``base=task_base(db)``; ``Celery(task_cls=task_base(db))`` makes
    it the base of every task of the app.

    Guarantees, for each call of the task body:

    * the sessions are committed when the body returns and rolled back when
      it raises, whatever the exception (``Retry`` from ``self.retry()``
      included); the exception propagates to Celery unchanged;
    * the sessions are removed afterwards in every case;
    * hooks registered with :func:`~wsgi_sqla.after_commit` in the body run
      once after the commit, and never when it rolled back;
    * inside an already running unit of work (a direct or eager call from a
      view or a ``transaction()`` block) the body joins that unit instead;
    * a prefork worker never uses a connection of the process it was forked
      from: the sessions' engines are made :func:`~wsgi_sqla.fork_safe`;
    * with ``replicas`` set, a call runs on a replica only if the replica has
      replayed the commit the task was enqueued after (if any), and on the
      primary otherwise; a write there raises
      :class:`~wsgi_sqla.ReplicaWriteError` and writes nothing;
    * with ``once`` set, a call whose key (the task id, or what ``once``
      derives from the arguments) was already committed does not run the
      body again: see :ref:`once`.
    """

    #: The scoped sessions each call of the task commits or rolls back.
    sessions: ClassVar[tuple[scoped_session[Any], ...]] = ()
    #: A :class:`~wsgi_sqla.Replicas`: run each call on a replica (see above).
    replicas: ClassVar[Replicas | None] = None
    #: ``True``: record each call's task id with its work and never run a committed id
    #: again; a callable: the key is ``once(*args, **kwargs)`` instead (see :ref:`once`).
    once: ClassVar[bool | Callable[..., str]] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner = cls.__qualname__
        if "sessions" in cls.__dict__:
            cls.sessions = own_sessions(cls.__dict__["sessions"], f"{owner}.sessions")
        if "once" in cls.__dict__ and not isinstance(cls.once, bool) and not callable(cls.once):
            raise TypeError(f"{owner}.once must be True, False or a callable, got {cls.once!r}")
        refuse_removed(owner, {name: None for name in _REMOVED if name in cls.__dict__})
        if "replicas" in cls.__dict__:
            cls.replicas = check_replicas(cls.__dict__["replicas"], f"{owner}.replicas")

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co:
        sessions = type(self).sessions
        if not sessions:
            raise TypeError(
                f"SessionTask: task {self.name!r} has the base wsgi_sqla.celery.SessionTask but no "
                "session was configured, so it cannot run as a unit of work: set "
                "`sessions = (db,)` on a subclass of SessionTask, or use "
                "base=wsgi_sqla.celery.task_base(db)"
            )
        start: Callable[[tuple[scoped_session[Any], ...]], UnitOfWork] = UnitOfWork
        replicas = type(self).replicas
        if replicas is not None:
            positions = self.request.get(POSITIONS_HEADER)
            start = functools.partial(replicas.task_unit, positions=positions)
        once = type(self).once
        if once is not False:
            key = task_key(once, self.request.id, args, kwargs)
            if key is not None:
                body = super().__call__
                return run_once(self.name, key, sessions, start, body, args, kwargs)  # type: ignore[no-any-return]
        with unit_of_work(sessions, start, "task"):
            return super().__call__(*args, **kwargs)

    def apply_async(self, *args: Any, **options: Any) -> Any:
        """Celery's ``apply_async``; from an after-commit hook, with the commit's positions."""
        positions = committed_positions()
        if positions is not None:
            options["headers"] = {POSITIONS_HEADER: positions, **(options.get("headers") or {})}
        return super().apply_async(*args, **options)


def task_base(
    *sessions: scoped_session[Any],
    replicas: Replicas | None = None,
    once: bool | Callable[..., str] = False,
    **removed: Never,
) -> type[SessionTask[Any, Any]]:
    """A :class:`SessionTask` subclass whose ``sessions`` are ``sessions``.

    ``@celery_app.task(base=task_base(db))`` or
    ``Celery(..., task_cls=task_base(db))``; with ``replicas``, its tasks
    read from replicas (see :class:`SessionTask`); with ``once``, each task
    id (or key) runs its body once (see :ref:`once`).

    :raises TypeError: when no session is given, or one is not a
        :class:`sqlalchemy.orm.scoped_session`; when ``replicas`` is not a
        :class:`~wsgi_sqla.Replicas`, or for a keyword removed before 1.0.
    """
    refuse_removed("task_base()", removed)
    checked = check_sessions(sessions, "task_base()")
    attributes: dict[str, Any] = {"sessions": checked, "__module__": __name__}
    if once is not False:
        attributes["once"] = once
    if replicas is not None:
        attributes["replicas"] = check_replicas(replicas, "task_base()")
    return type("SessionTask", (SessionTask,), attributes)
