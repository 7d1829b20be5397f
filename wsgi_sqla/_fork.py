"""Engines that survive ``os.fork()``: a child never uses its parent's connections.

A pre-forking server that imports the application before it forks (``gunicorn
--preload``, uWSGI without ``lazy-apps``) copies every engine's connection
pool into each worker. Whatever connections the master had opened (creating
tables at import, a warm-up query) then sit in several processes' pools at
once, and two workers end up talking over one socket: interleaved protocol
messages, one worker reading the other's results, or a transaction committed
by someone else's request.

SQLAlchemy's documented cure ("Using Connection Pools with Multiprocessing
or os.fork()") is ``engine.dispose(close=False)`` in the child: the child
starts with an empty pool of its own and leaves the inherited connections
untouched, so the parent can go on using them. :func:`fork_safe` registers
exactly that with :func:`os.register_at_fork`, which costs nothing per
request. :class:`~wsgi_sqla.SessionMiddleware` does it by itself for the
engines its sessions are bound to; call :func:`fork_safe` for any other
engine (one used only by scripts or tasks, or bound per mapper in a way the
middleware cannot see).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

__all__ = ["dispose_in_children", "fork_safe"]

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_lock = threading.Lock()
_hook_registered = False


def fork_safe(engine: Engine) -> Engine:
    """Make ``engine`` start with an empty pool in every child process; return it.

    After ``os.fork()`` the child calls ``engine.dispose(close=False)``: the
    connections inherited from the parent are dropped without being closed
    (closing them would end the parent's sessions too) and the child opens
    its own on first use. Calling it again for the same engine does nothing
    more. The engine is held weakly, so this keeps no engine alive. On
    platforms without ``os.fork`` it does nothing.
    """
    if not isinstance(engine, Engine):
        raise TypeError(
            f"fork_safe(): needs a sqlalchemy.Engine, got "
            f"{type(engine).__module__}.{type(engine).__qualname__}"
        )
    global _hook_registered
    with _lock:
        _engines.add(engine)
        if not _hook_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_dispose_inherited_pools)
            _hook_registered = True
    return engine


def _dispose_inherited_pools() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)


def dispose_in_children(sessions: Iterable[scoped_session[Any]]) -> None:
    """:func:`fork_safe` for every engine the sessions' factories are bound to."""
    for scoped in sessions:
        kw: dict[str, Any] = getattr(scoped.session_factory, "kw", {})
        binds: dict[Any, Any] = kw.get("binds") or {}
        for bind in (kw.get("bind"), *binds.values()):
            if isinstance(bind, Engine):
                fork_safe(bind)
