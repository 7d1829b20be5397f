"""What the Flask adapters share: a registry scoped to the request's unit, and its view app.

Flask-SQLAlchemy and Flask-SQLAlchemy-Lite scope their sessions to the
application context, which Flask pops before the middleware decides. The
adapters give the request's unit a session of its own instead, held by a
:class:`UnitRegistry`: one session per running unit, none outside a unit.
:class:`ViewApp` runs Flask's ``wsgi_app`` after telling that registry which
application the request belongs to, so a session first used while the body
streams (no Flask context there) is still made for the right application.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.util import ScopedRegistry

from ._context import current

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ._unit import UnitOfWork

__all__ = [
    "ExplicitCommitError",
    "UnitRegistry",
    "ViewApp",
    "check_init_app",
    "refuse_commit",
    "running",
]


class ExplicitCommitError(RuntimeError):
    """An explicit ``commit()`` inside a request of an app set up with ``refuse_commits=True``.

    The message names the file and line of the call. The middleware commits
    when the response succeeds; remove the call, or use
    :func:`wsgi_sqla.force_commit` to commit despite an error status.
    """


def check_init_app(
    where: str, app: object, db: object, db_type: type, options: Mapping[str, object]
) -> None:
    """Refuse, naming ``where``, an ``app`` that is not Flask, a ``db`` of another type,
    or middleware ``options`` the adapters cannot honour (``idempotency=``)."""
    if not isinstance(app, Flask):
        raise TypeError(f"{where}: app must be a flask.Flask, got {app!r}")
    kind = f"{db_type.__module__.split('.')[0]}.{db_type.__qualname__}"
    if not isinstance(db, db_type):
        raise TypeError(f"{where}: db must be a {kind}, got {db!r}")
    if options.get("idempotency") is not None:
        # The keys' store claims keys on its engine before the application runs, outside
        # any application context; the adapters' sessions find their engine per application.
        raise TypeError(
            f"{where}: idempotency=IdempotencyKeys() is not supported with {kind} yet: the "
            "keys' table needs a session bound to one engine, and its sessions choose their "
            "engine per application. Serve keyed routes through SessionMiddleware over a "
            "scoped_session(sessionmaker(bind=engine)) of your own"
        )


def refuse_commit(caller_depth: int) -> None:
    """Raise :class:`ExplicitCommitError` naming the frame ``caller_depth`` levels up."""
    caller = sys._getframe(caller_depth + 1)
    raise ExplicitCommitError(
        f"db.session.commit() called at {caller.f_code.co_filename}:{caller.f_lineno} "
        "inside a request, with refuse_commits=True: the middleware commits when the "
        "response succeeds; remove this call (or use wsgi_sqla.force_commit())"
    )


def running(unit_session: scoped_session[Any]) -> UnitOfWork | None:
    """The running unit, if it is a request's over ``unit_session``."""
    unit = current.get()
    if unit is not None and unit_session in unit.sessions:
        return unit
    return None


class UnitRegistry(ScopedRegistry[Session]):
    """One session per running unit of work; none outside a unit.

    ``make(app)`` creates a session for the request's application (``None``
    when the registry does not know it). Each thread remembers the request
    it runs (its unit, application and ``refuse_commits``). A unit normally
    removes its session at its end; one whose response was never closed
    (Flask's test client without ``with`` or ``buffered=True``) leaves it
    here, and the next request on the same thread closes it if it holds no
    transaction, so a test suite does not keep every request's session.
    """

    def __init__(self, make: Callable[[Flask | None], Session]) -> None:
        self.createfunc = make  # type: ignore[assignment]
        self.scopefunc = current.get
        self.registry: dict[Any, Session] = {}
        self._make = make
        self._requests = threading.local()

    def enter(self, app: Flask, refuse_commits: bool) -> None:
        """A request of ``app`` starts on this thread, in the running unit."""
        unit = current.get()
        earlier: tuple[Any, Flask, bool] | None = getattr(self._requests, "request", None)
        self._requests.request = (unit, app, refuse_commits)
        if earlier is not None and earlier[0] is not unit:
            left = self.registry.get(earlier[0])
            if left is not None and not left.in_transaction():
                del self.registry[earlier[0]]
                left.close()

    def _request(self) -> tuple[Any, Flask, bool] | None:
        request: tuple[Any, Flask, bool] | None = getattr(self._requests, "request", None)
        if request is not None and request[0] is current.get():
            return request
        return None

    def app(self) -> Flask | None:
        """The application of the request running on this thread, if any."""
        request = self._request()
        return request[1] if request is not None else None

    def refuses_commits(self) -> bool:
        """Whether the request running on this thread was set up with ``refuse_commits``."""
        request = self._request()
        return request is not None and request[2]

    def __call__(self) -> Session:
        unit = current.get()
        try:
            return self.registry[unit]
        except KeyError:
            pass
        if unit is None:
            raise RuntimeError("wsgi_sqla: a request's session was used outside its request")
        return self.registry.setdefault(unit, self._make(self.app()))

    def close_left_behind(self) -> None:
        """Close the session the thread's last request left here (its unit is over).

        Called when an application context ends outside any unit: Flask's
        test client keeps the last request's context pushed in a ``with
        client:`` block and pops it at the block's end, after the test body
        may have used that request's objects again (a lazy load begins a
        transaction); that transaction is rolled back here, as
        Flask-SQLAlchemy's own teardown would have done.
        """
        request: tuple[Any, Flask, bool] | None = getattr(self._requests, "request", None)
        if request is not None and current.get() is None:
            left = self.registry.pop(request[0], None)
            if left is not None:
                left.close()

    def close_all(self) -> None:
        """Close and forget every session, whatever its unit (the end of an isolated test)."""
        sessions, self.registry = list(self.registry.values()), {}
        for session in sessions:
            session.close()

    def has(self) -> bool:
        return current.get() in self.registry

    def set(self, obj: Session) -> None:
        self.registry[current.get()] = obj

    def clear(self) -> None:
        self.registry.pop(current.get(), None)


def unit_scoped(
    factory: sessionmaker[Any], make: Callable[[Flask | None], Session]
) -> tuple[scoped_session[Any], UnitRegistry]:
    """A ``scoped_session`` over ``factory``, its registry a :class:`UnitRegistry` on ``make``."""
    scoped: scoped_session[Any] = scoped_session(factory)
    registry = scoped.registry = UnitRegistry(make)
    return scoped, registry


class ViewApp:
    """Flask's own ``wsgi_app``, run after telling the unit registries which application it is.

    ``enter(app, refuse_commits)`` is :meth:`UnitRegistry.enter` (or calls it
    for each registry of an adapter that has several).
    """

    __slots__ = ("app", "enter", "refuse_commits", "wsgi_app")

    def __init__(
        self,
        wsgi_app: Callable[..., Iterable[bytes]],
        app: Flask,
        enter: Callable[[Flask, bool], None],
        refuse_commits: bool,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.enter = enter
        self.refuse_commits = refuse_commits

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.enter(self.app, self.refuse_commits)
        return self.wsgi_app(environ, start_response)
