"""Flask-SQLAlchemy-Lite applications as units of work, in one line.

Install with the ``flask-sqlalchemy-lite`` extra (``pip install
wsgi_sqla[flask-sqlalchemy-lite]``)::

    db = SQLAlchemy()

    def create_app():
        app = Flask(__name__)
        app.config["SQLALCHEMY_ENGINES"] = {"default": "postgresql+psycopg:///app"}
        db.init_app(app)
        wsgi_sqla.flask_sqlalchemy_lite.init_app(app, db)
        return app

Flask-SQLAlchemy-Lite never commits: its sessions are closed, their work
discarded, when the application context ends. :func:`init_app` wraps
``app.wsgi_app`` in a :class:`~wsgi_sqla.SessionMiddleware` and makes
``db.session`` and every named session (``db.get_session("other")``),
inside each request, sessions of that request's unit of work: all of them
are committed when the status is below 400 (flushed first, then committed
in the order they were first used) and rolled back otherwise, and they live
until the response is closed, streaming included.

Outside requests (CLI commands, ``flask shell``, app contexts in tests)
``db.session`` and ``db.get_session()`` are Flask-SQLAlchemy-Lite's own.
What the adapter changes on ``db`` (its ``get_session``) it changes once,
however many applications share ``db``.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from flask import Flask
from flask_sqlalchemy_lite import SQLAlchemy
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from . import _flask
from ._flask import ExplicitCommitError, UnitRegistry, ViewApp, refuse_commit, running, unit_scoped
from ._middleware import SessionMiddleware
from ._owners import own_engine
from ._rejected import watch
from ._unit import UnitOfWork

__all__ = ["ExplicitCommitError", "init_app"]

#: ``db`` attribute holding what the adapter made for it (see :class:`_Adopted`).
_ADOPTED = "_wsgi_sqla_adopted"


def init_app(
    app: Flask, db: SQLAlchemy, *, refuse_commits: bool = False, **options: Any
) -> SessionMiddleware:
    """Make every request of ``app`` one unit of work over ``db``'s sessions.

    Wraps ``app.wsgi_app`` in a :class:`~wsgi_sqla.SessionMiddleware` and
    returns it; ``options`` are its keywords (``retry=``, ``commit_veto=``,
    ``errors=``, ...). Call it before or after ``db.init_app(app)``, once per
    application; one ``db`` may serve many applications, each with its own
    engines.

    Guarantees, inside a request: ``db.session`` and each
    ``db.get_session(name)`` are the unit's sessions from their first use
    until the response is closed; the unit commits all of them when the
    status is below 400 and rolls all back otherwise, before the client is
    told anything; an explicit ``commit()`` commits early.

    :param refuse_commits: make an explicit ``commit()`` of one of these
        sessions inside a request raise :class:`ExplicitCommitError`, naming
        the file and line of the call. Outside requests commits are never
        refused.
    :raises TypeError: when ``app`` is not a Flask application or ``db`` not
        a Flask-SQLAlchemy-Lite ``SQLAlchemy``, or ``idempotency=`` is given:
        :class:`~wsgi_sqla.IdempotencyKeys` are not supported with the
        adapters yet (their table needs a session bound to one engine).
    """
    _flask.check_init_app("wsgi_sqla.flask_sqlalchemy_lite.init_app", app, db, SQLAlchemy, options)
    adopted = _adopt(db)
    adopted.own_engines(app)
    middleware = SessionMiddleware(
        ViewApp(app.wsgi_app, app, adopted.enter, refuse_commits),
        adopted.default,
        **options,
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.teardown_appcontext(adopted.teardown)
    return middleware


def _adopt(db: SQLAlchemy) -> _Adopted:
    adopted: _Adopted | None = getattr(db, _ADOPTED, None)
    if adopted is None:
        adopted = _Adopted(db)
        setattr(db, _ADOPTED, adopted)
        db.get_session = adopted.get_session  # type: ignore[method-assign]
        db.init_app = adopted.init_app  # type: ignore[method-assign,assignment]
    return adopted


class _Adopted:
    """What the adapter keeps for one ``db``: a unit-scoped session per session name."""

    def __init__(self, db: SQLAlchemy) -> None:
        self.db = db
        self.original_get_session = db.get_session
        self.original_init_app = db.init_app
        self.named: dict[str, scoped_session[Any]] = {}
        self.watched: set[int] = set()
        self.default = self.scoped("default")
        registry = self.default.registry
        assert isinstance(registry, UnitRegistry)
        #: The default session's registry: it knows each thread's request and application.
        self.registry: UnitRegistry = registry

    def scoped(self, name: str) -> scoped_session[Any]:
        """The unit-scoped session called ``name`` (made at its first use)."""
        scoped = self.named.get(name)
        if scoped is None:
            scoped, registry = unit_scoped(sessionmaker(), self.make)
            scoped = self.named.setdefault(name, scoped)
            app = self.registry.app() if name != "default" else None
            if app is not None:  # first used inside a request: it runs on this thread
                registry.enter(app, self.registry.refuses_commits())
        return scoped

    def make(self, app: Flask | None) -> Session:
        """A session from the request application's sessionmaker, watched like the package's."""
        app = app or self.registry.app()
        state = self.db._app_state.get(app) if app is not None else None
        factory = state.sessionmaker if state is not None else self.db.sessionmaker
        if id(factory) not in self.watched:
            watch((scoped_session(factory),))
            self.watched.add(id(factory))
        session = factory()
        if self.registry.refuses_commits():
            session.commit = _refusing(session.commit)  # type: ignore[method-assign]
        return session

    def init_app(self, app: Flask) -> None:
        """``db.init_app``, then the package takes on the engines it made (fork safety)."""
        self.original_init_app(app)
        self.own_engines(app)

    def own_engines(self, app: Flask) -> None:
        """Make ``app``'s engines fork safe, if ``db.init_app(app)`` made them already."""
        state = self.db._app_state.get(app)
        if state is not None:
            for engine in state.engines.values():
                own_engine(engine)

    def enter(self, app: Flask, refuse_commits: bool) -> None:
        """A request of ``app`` starts on this thread: tell every session name's registry."""
        for scoped in tuple(self.named.values()):
            registry = scoped.registry
            if isinstance(registry, UnitRegistry):
                registry.enter(app, refuse_commits)

    def teardown(self, exc: BaseException | None) -> None:
        """An app context ended: outside a unit, close what the thread's last request left."""
        for scoped in self.named.values():
            registry = scoped.registry
            if isinstance(registry, UnitRegistry):
                registry.close_left_behind()

    def get_session(self, name: str = "default") -> Session:
        """``db.get_session``: the unit's session inside a request, Lite's own outside."""
        unit = running(self.default)
        if unit is None:
            return self.original_get_session(name)
        scoped = self.scoped(name)
        if scoped not in unit.sessions:
            unit.join((scoped,))
        session: Session = scoped()
        return session


def _refusing(commit: Any) -> Any:
    """``commit`` for the unit's own decision; an :class:`ExplicitCommitError` for anyone else."""

    def guarded() -> None:
        if not _from_the_unit(sys._getframe(1)):
            refuse_commit(1)
        commit()

    return guarded


_UNIT_COMMIT = UnitOfWork.commit.__code__


def _from_the_unit(frame: FrameType | None) -> bool:
    """Whether the commit was called by the unit's own decision (a few frames up, at most)."""
    for _ in range(8):  # the unit's commit, through its telemetry wrapper when that is on
        if frame is None:
            return False
        if frame.f_code is _UNIT_COMMIT:
            return True
        frame = frame.f_back
    return False
