"""Engines that survive a fork: a child never uses its parent's connections.

A pre-forking server that imports the application before it forks (``gunicorn
--preload``, uWSGI without ``lazy-apps``) copies every engine's connection
pool into each worker. Whatever connections the master had opened (creating
tables at import, a warm-up query) then sit in several processes' pools at
once, and two workers end up talking over one socket: interleaved protocol
messages, one worker reading the other's results, or a transaction committed
by someone else's request.

Three guards, each cheap, so that no server setting is needed:

1. :func:`os.register_at_fork`: after a fork made by Python (gunicorn,
   multiprocessing, Celery) the child calls ``engine.dispose(close=False)``
   (SQLAlchemy's documented cure): it starts with an empty pool of its own
   and leaves the inherited connections untouched, so the parent can go on
   using them.
2. A process check at the start of each unit of work (:func:`adopt_pools`,
   one ``os.getpid()``; a request, a ``transaction()`` block, a task): a
   server that forks from C without running Python's fork hooks (uWSGI by
   default, unless ``--py-call-osafterfork``) is caught before the unit
   checks anything out, and the inherited pools are dropped the same way.
   This runs before ``pool_pre_ping`` could send a ping over a socket
   another process also uses.
3. SQLAlchemy's pool-event recipe for whatever else checks out a
   connection in a child (a script, a thread started before any request):
   the pid is recorded on ``connect``, and on ``checkout`` a connection
   opened by another process is detached from its record (so the child
   never closes the parent's socket, which would end the parent's session)
   and refused with :class:`~sqlalchemy.exc.DisconnectionError`; the pool
   then opens a fresh one. A pre-pinging engine has pinged by then: used
   outside any unit in a child forked from C, it can send that one ping
   over the inherited socket.

:class:`~wsgi_sqla.SessionMiddleware`, :func:`~wsgi_sqla.transaction` and the
Celery base (:class:`~wsgi_sqla.celery.SessionTask`,
:func:`~wsgi_sqla.celery.task_base`) do all of this by themselves for the
engines their sessions are bound to, so a ``multiprocessing`` or Celery
prefork child never talks over its parent's connection; call
:func:`fork_safe` for any other engine.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event, exc

__all__ = ["adopt_pools", "around_forks", "fork_safe", "on_new_process"]

#: Each registered engine, with the pid of the process its pool belongs to.
_engines: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_hook_registered = False
#: The process whose pools the registered engines hold; another pid means a fork.
_owner = os.getpid()

_PID = "wsgi_sqla_pid"
#: Called, in order, in a process that :func:`adopt_pools` found to be new.
_callbacks: list[Callable[[], object]] = []
#: Called before a Python fork, and (in reverse order) after it in the parent.
_before: list[Callable[[], object]] = []
_after_in_parent: list[Callable[[], object]] = []


def fork_safe(engine: Engine) -> Engine:
    """Make ``engine`` never hand a child process a connection of its parent; return it.

    After a fork the child starts with an empty pool and opens its own
    connections on first use; the inherited ones are dropped without being
    closed (closing them would end the parent's sessions too). This holds
    whether or not the server runs Python's fork hooks: a connection opened
    by another process is refused at checkout. Calling it again for the same
    engine does nothing more. The engine is held weakly, so this keeps no
    engine alive.
    """
    if not isinstance(engine, Engine):
        raise TypeError(
            f"fork_safe(): needs a sqlalchemy.Engine, got "
            f"{type(engine).__module__}.{type(engine).__qualname__}"
        )
    with _lock:
        if engine in _engines:
            return engine
        # The owner, not this pid: in a child that has not adopted its pools
        # yet, an engine first registered here may hold the parent's connections.
        _engines[engine] = _owner
        event.listen(engine, "connect", _record_pid)
        event.listen(engine, "checkout", _refuse_foreign)
        _register_hooks()
    return engine


def _register_hooks() -> None:
    """Register the package's one set of Python fork hooks (under ``_lock``), once."""
    global _hook_registered
    if not _hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork
        )
        _hook_registered = True


def around_forks(before: Callable[[], object], after_in_parent: Callable[[], object]) -> None:
    """Call ``before()`` in the parent before each Python fork, ``after_in_parent()`` after it.

    For process-wide state a fork must not copy half-way (the replica lag
    monitor's measurement). Every :func:`os.register_at_fork` of the package
    is made here; registering the same pair twice calls it once.
    """
    with _lock:
        if before not in _before:
            _before.append(before)
            _after_in_parent.append(after_in_parent)
        _register_hooks()


def _before_fork() -> None:
    for callback in list(_before):
        callback()


def _after_fork_in_parent() -> None:
    for callback in reversed(list(_after_in_parent)):
        callback()


def _record_pid(dbapi_connection: Any, record: Any) -> None:
    record.info[_PID] = os.getpid()


def _refuse_foreign(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    pid = os.getpid()
    opened_by = record.info.get(_PID, pid)
    if opened_by != pid:
        # Detach before raising: the pool then invalidates a record with no connection,
        # so the parent's socket is never closed (nor a goodbye sent over it) from here.
        record.dbapi_connection = proxy.dbapi_connection = None
        raise exc.DisconnectionError(
            f"wsgi_sqla: connection opened by process {opened_by}, checked out in {pid}; "
            "replaced by a connection of this process"
        )


def _after_fork() -> None:
    adopt_pools()


def adopt_pools() -> None:
    """In a process that forked since the pools were made, drop the inherited pools.

    Costs one ``os.getpid()`` when nothing forked. Engines whose pool was
    made in this process (an application imported after the fork) are left
    alone.
    """
    global _owner
    pid = os.getpid()
    if pid == _owner:
        return
    with _lock:
        if pid == _owner:
            return
        for engine, made_in in list(_engines.items()):
            if made_in != pid:
                engine.dispose(close=False)
                _engines[engine] = pid
        _owner = pid
        callbacks = list(_callbacks)
    for callback in callbacks:
        callback()


def on_new_process(callback: Callable[[], object]) -> None:
    """Call ``callback()`` whenever :func:`adopt_pools` finds itself in a forked child.

    For process-wide state other than pools (the replica lag monitor's
    thread, which a child does not inherit). Runs after the pools were
    dropped; registering the same callback twice calls it once.
    """
    with _lock:
        if callback not in _callbacks:
            _callbacks.append(callback)
