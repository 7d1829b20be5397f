"""Flask-SQLAlchemy applications as units of work, in one line.

Install with the ``flask-sqlalchemy`` extra (``pip install
wsgi_sqla[flask-sqlalchemy]``)::

    db = SQLAlchemy(model_class=Base)

    def create_app():
        app = Flask(__name__)
        db.init_app(app)
        wsgi_sqla.flask_sqlalchemy.init_app(app, db)
        return app

:func:`init_app` wraps ``app.wsgi_app`` in a :class:`~wsgi_sqla.SessionMiddleware`
and makes ``db.session``, inside each request, the session of that
request's unit of work: from its first use until the middleware has
committed (status below 400) or rolled back, and the response is closed,
streaming included. Models, ``Model.query``, ``db.paginate``,
``db.get_or_404`` and ``SQLALCHEMY_BINDS`` keep working. With several
binds the request's one session is flushed as a whole before anything is
committed, then SQLAlchemy commits its connections one after the other
(there is no two-phase commit across databases).

Outside requests (``flask shell``, CLI commands, app contexts pushed by
tests) ``db.session`` is Flask-SQLAlchemy's own, scoped to the application
context and removed when it ends.

What the adapter changes on ``db`` it changes once, however many
applications share ``db`` (the app-factory pattern in test suites):

* ``db.session``'s registry asks first whether a request's unit is running,
  and hands out that unit's session if so;
* Flask-SQLAlchemy's app-context teardown leaves the unit's session alone
  (it fires for every app context that ends, nested or re-pushed ones inside
  the request included); the unit removes it after its decision;
* a session of a unit remembers its application, so the unit can flush and
  commit it (``get_bind`` reads that application's engines) after Flask has
  popped its contexts, while the body streams and in ``close()``; with
  ``SQLALCHEMY_TRACK_MODIFICATIONS`` on, its commit runs in an application
  context of its own so that the model-change signals are sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.util import ScopedRegistry

from ._context import current, quiet_leftovers
from ._flask import (
    ExplicitCommitError,
    UnitRegistry,
    ViewApp,
    check_init_app,
    refuse_commit,
    running,
    unit_scoped,
)
from ._middleware import SessionMiddleware
from ._owners import own_engine
from .testing import Isolation, outer_transaction, restore

__all__ = ["ExplicitCommitError", "init_app", "isolated"]

#: ``db`` attribute holding the request-scoped session and registry the adapter made for it.
_ADOPTED = "_wsgi_sqla_adopted"
#: ``session.info`` keys: the application a unit's session belongs to, and its pushed context.
_APP = "wsgi_sqla.flask_app"
_PUSHED = "wsgi_sqla.flask_app_context"


def init_app(
    app: Flask, db: SQLAlchemy, *, refuse_commits: bool = False, **middleware_options: Any
) -> SessionMiddleware:
    """Make every request of ``app`` one unit of work over ``db.session``.

    Wraps ``app.wsgi_app`` in a :class:`~wsgi_sqla.SessionMiddleware` and
    returns it; ``middleware_options`` are its keywords (``retry=``,
    ``commit_veto=``, ``errors=``, ...). Call it before or after
    ``db.init_app(app)``, once per application; one ``db`` may serve many
    applications, each of which uses its own engines.

    Guarantees, inside a request:

    * ``db.session`` is the unit's session from its first use until the
      response is closed; nothing Flask-SQLAlchemy does when an application
      context ends rolls it back or removes it early;
    * the unit commits it when the status is below 400 and rolls it back
      otherwise, before the client is told anything;
    * an explicit ``db.session.commit()`` commits early, as it did without
      the middleware, and the unit commits or rolls back what follows.

    :param refuse_commits: make an explicit ``db.session.commit()`` inside a
        request raise :class:`ExplicitCommitError`, naming the file and line
        that called it, instead of committing: for teams removing their
        manual commits. Outside requests commits are never refused.
    :raises TypeError: when ``app`` is not a Flask application or ``db`` not
        a Flask-SQLAlchemy ``SQLAlchemy``, or ``idempotency=`` is given:
        :class:`~wsgi_sqla.IdempotencyKeys` are not supported with the
        adapters yet (their table needs a session bound to one engine).
    """
    check_init_app("wsgi_sqla.flask_sqlalchemy.init_app", app, db, SQLAlchemy, middleware_options)
    unit_session, registry = _adopt(db)
    for index, teardown in enumerate(app.teardown_appcontext_funcs):
        if teardown == db.__class__._teardown_session.__get__(db):  # db.init_app ran first
            app.teardown_appcontext_funcs[index] = db._teardown_session
    for engine in db._app_engines.get(app, {}).values():  # db.init_app ran first
        own_engine(engine)
    middleware = SessionMiddleware(
        ViewApp(app.wsgi_app, app, registry.enter, refuse_commits),
        unit_session,
        **middleware_options,
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return middleware


@contextlib.contextmanager
def isolated(app: Flask, db: SQLAlchemy) -> Iterator[Isolation]:
    """Run a block with ``app``'s engines replaced by connections in outer transactions.

    :func:`wsgi_sqla.testing.isolated` for a Flask-SQLAlchemy application
    (its sessions choose their engine from ``db.engines``, so they are
    isolated per application rather than per session): for the block, each
    engine of ``app`` in ``db.engines`` is one connection inside an outer
    transaction, and every session of ``db`` (the requests' and the app
    contexts') joins it in a SAVEPOINT. Commits, the middleware's and
    explicit ones, release a savepoint and are visible to later code in the
    block; when the block ends the outer transactions are rolled back and
    the engines restored. A request's session left behind by Flask's test
    client is closed without a warning. For the pytest plugin, override its
    fixture in ``conftest.py``::

        @pytest.fixture
        def wsgi_sqla_db(app):
            with wsgi_sqla.flask_sqlalchemy.isolated(app, db) as isolation:
                yield isolation

    Not covered, as for :func:`wsgi_sqla.testing.isolated`: other threads,
    connections the code opens itself, and DDL on MariaDB/MySQL.

    :raises RuntimeError: when ``db.init_app(app)`` has not run.
    """
    engines: dict[Any, Any] | None = db._app_engines.get(app)
    if engines is None:
        raise RuntimeError(
            "wsgi_sqla.flask_sqlalchemy.isolated(): call db.init_app(app) first; "
            "the app has no engines yet"
        )
    unit_session, registry = _adopt(db)
    factory = unit_session.session_factory
    with contextlib.ExitStack() as stack:
        connections: dict[Engine, Connection] = {}
        for engine in set(engines.values()):
            connections[engine] = stack.enter_context(outer_transaction(engine))
        stack.callback(engines.update, dict(engines))
        engines.update({key: connections[engine] for key, engine in engines.items()})
        stack.callback(restore, factory, dict(factory.kw))
        factory.configure(join_transaction_mode="create_savepoint")
        token = quiet_leftovers.set(True)
        stack.callback(quiet_leftovers.reset, token)
        stack.callback(registry.close_all)  # first at exit: before the outer rollback
        yield Isolation(connections)


def _adopt(db: SQLAlchemy) -> tuple[scoped_session[Any], UnitRegistry]:
    """Patch ``db`` once for every application: return the unit-scoped session and registry."""
    adopted: tuple[scoped_session[Any], UnitRegistry] | None = getattr(db, _ADOPTED, None)
    if adopted is not None:
        return adopted
    scoped: scoped_session[Any] = db.session
    factory = scoped.session_factory

    def make(app: Flask | None) -> Session:
        session: Session = factory()
        _pin_app(session, app)
        return session

    unit_session, registry = unit_scoped(factory, make)
    scoped.registry = _Switch(scoped.registry, unit_session)
    original_commit = scoped.commit
    original_teardown = db._teardown_session

    def commit() -> None:
        if running(unit_session) is not None and registry.refuses_commits():
            refuse_commit(1)
        original_commit()

    def teardown(exc: BaseException | None) -> None:
        if running(unit_session) is None:
            original_teardown(exc)
            registry.close_left_behind()

    original_make_engine = db._make_engine

    def make_engine(bind_key: str | None, options: dict[str, Any], app: Flask) -> Engine:
        return own_engine(original_make_engine(bind_key, options, app))

    scoped.commit = commit  # type: ignore[method-assign]
    db._teardown_session = teardown  # type: ignore[method-assign]
    db._make_engine = make_engine  # type: ignore[method-assign]
    setattr(db, _ADOPTED, (unit_session, registry))
    return unit_session, registry


class _Switch(ScopedRegistry[Session]):
    """``db.session``'s registry: the unit's session in a request, Flask-SQLAlchemy's outside."""

    def __init__(self, original: ScopedRegistry[Session], unit_session: scoped_session[Any]):
        self.createfunc = original.createfunc
        self.scopefunc = original.scopefunc
        self.registry = original.registry
        self.original = original
        self.unit_session = unit_session
        #: Named by check_sessions when this registry is given to SessionMiddleware directly.
        self.adapter = "wsgi_sqla.flask_sqlalchemy.init_app"

    def _ours(self) -> ScopedRegistry[Session]:
        unit = current.get()
        if unit is not None and self.unit_session in unit.sessions:
            return self.unit_session.registry
        return self.original

    def __call__(self) -> Session:
        return self._ours()()

    def has(self) -> bool:
        return self._ours().has()

    def set(self, obj: Session) -> None:
        self._ours().set(obj)

    def clear(self) -> None:
        self._ours().clear()


def _pin_app(session: Session, request_app: Flask | None) -> None:
    """Pin ``session`` to the request's application, for use after Flask popped its contexts."""
    if request_app is not None:
        app = request_app
    elif has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    else:
        return
    session.info[_APP] = app
    db = session._db  # type: ignore[attr-defined]
    session._db = _PinnedDb(db, app)  # type: ignore[attr-defined]
    if app.config.get("SQLALCHEMY_TRACK_MODIFICATIONS"):
        event.listen(session, "before_commit", _push_app_context, insert=True)
        for name in ("after_commit", "after_rollback", "after_soft_rollback"):
            event.listen(session, name, _pop_app_context)


class _PinnedDb:
    """``db`` as a unit's session sees it: the engines of its application, with or without one."""

    def __init__(self, db: SQLAlchemy, app: Flask) -> None:
        self._wsgi_sqla_db = db
        self._wsgi_sqla_app = app

    @property
    def engines(self) -> Any:
        if has_app_context():
            return self._wsgi_sqla_db.engines
        return self._wsgi_sqla_db._app_engines[self._wsgi_sqla_app]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wsgi_sqla_db, name)


def _push_app_context(session: Session) -> None:
    """A commit outside any app context (the unit's decision) gets one: the signals need it."""
    if not has_app_context() and _PUSHED not in session.info:
        context = session.info[_APP].app_context()
        context.push()
        session.info[_PUSHED] = context


def _pop_app_context(session: Session, *args: Any) -> None:
    context = session.info.pop(_PUSHED, None)
    if context is not None:
        context.pop()
