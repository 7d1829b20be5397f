"""One web request, one unit of work.

:class:`SessionMiddleware` wraps any WSGI application. It lets the
application run, looks at the status it chose, and then commits every
scoped session (status below 400) or rolls them all back (an exception, a
veto, or a per-request override), and finally removes them.

The decision is taken at the last moment at which it can still change what
the client is told: after the application has produced its status and
before any byte of the response, headers included, reaches the server. That
ordering is the whole point. A hook that commits after the response has
been built (Flask's ``after_request``) or after it has been sent can tell
the client "200 OK" and then fail to commit; here a failed commit answers
``500 Internal Server Error`` instead (and is raised again from ``close()``
for the server's log and outer error-reporting middleware), so the client
never sees success for data that is not in the database, on any server.

Applications that call ``start_response`` lazily, from inside the first
iteration of their body (generator applications), are handled by pulling
the first chunk before deciding. Applications that use the ``write()``
callable get the decision before their first write passes through. After
the decision the body streams unbuffered; the sessions stay usable while it
does, and database work done during the stream is committed when the server
calls ``close()``, provided the response was committed and the iteration
ended normally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import scoped_session
from typing_extensions import Never

from ._errors import error_response, started
from ._http import default_commit_veto
from ._idempotency import IdempotencyKeys, KeyStore
from ._keyed import serve_keyed
from ._owners import own_sessions, refuse_removed
from ._replicas import Replicas, check_replicas
from ._request import RequestUnit
from ._retry import Retry
from ._unit import UnitOfWork

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["CommitVeto", "SessionMiddleware", "default_commit_veto"]

logger = logging.getLogger("wsgi_sqla")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
_OptExcInfo = _ExcInfo | tuple[None, None, None] | None
_Headers = list[tuple[str, str]]
_END: Any = object()

_Attempt = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]

CommitVeto = Callable[["WSGIEnvironment", str, _Headers], bool]
"""``commit_veto(environ, status, headers) -> bool``; ``True`` means roll back."""


class SessionMiddleware:
    """Wrap ``app`` so that each request is one unit of work over ``sessions``::

        db = scoped_session(sessionmaker(bind=create_engine(url)))
        app.wsgi_app = SessionMiddleware(app.wsgi_app, db)   # Flask
        application = SessionMiddleware(application, db)     # any WSGI application

    A response below 400 commits the request's work, any other rolls it
    back, and the sessions are removed after every request.

    Guarantees, for every request:

    * the sessions are committed only if the application returned normally,
      the veto and the per-request override allow it, and every commit
      succeeded; otherwise all of them are rolled back;
    * the decision is taken before any byte of the response reaches the
      server, and a failed commit never lets the application's status out:
      the client gets ``500 Internal Server Error`` (see ``errors``);
    * the application's iterable is closed exactly once and the sessions are
      then removed, whatever happened, so no connection stays checked out;
    * a request that never touches a session creates no Session, checks out
      no connection and sends no SQL.

    :param app: the WSGI application to wrap.
    :param sessions: one or more :class:`sqlalchemy.orm.scoped_session`.
    :param commit_veto: ``commit_veto(environ, status, headers) -> bool``,
        called with the final status string and header list; ``True`` rolls
        back. Defaults to :func:`default_commit_veto`.
    :param retry: a :class:`~wsgi_sqla.Retry` (``retry=Retry(3)``): run a
        request again after a transient database error, while nothing of its
        response was sent. ``None``, the default, never retries and costs
        nothing.
    :param replicas: a :class:`~wsgi_sqla.Replicas` object: send the requests
        its ``reads`` predicate accepts to read replicas, with read-your-writes;
        see :class:`~wsgi_sqla.Replicas`. ``None``, the default, turns all of
        this off at no cost.
    :param idempotency: an :class:`~wsgi_sqla.IdempotencyKeys` object: a
        POST or PATCH with an ``Idempotency-Key`` header runs the application
        at most once per client and key, its response recorded in its own
        transaction and replayed to repeats (see :doc:`/exactly-once`).
        ``None``, the default, ignores the header at the cost of one
        attribute check.
    :param errors: what a request whose application raised, or whose commit
        failed, gives the server while nothing of its response was sent.
        ``"respond"`` (the default): the middleware answers ``500 Internal
        Server Error`` with a body that reveals nothing, logs the exception
        with its traceback, and raises that same exception again from the
        response's ``close()``, so the server logs it and error-reporting
        middleware wrapped around this one (Sentry's) still sees it. Every
        server then sends a status, uWSGI included, which otherwise drops
        the connection without one. ``"propagate"``: the exception leaves
        the middleware's call, as a development debugger wrapped around it
        expects; the server then answers (or, uWSGI, drops the connection).
        Once the response has begun, an exception always propagates.
    :raises TypeError: when an argument has the wrong type (``app`` or
        ``commit_veto`` not callable, a session not a ``scoped_session``,
        ``retry`` not a :class:`~wsgi_sqla.Retry`, ``replicas`` not a
        :class:`~wsgi_sqla.Replicas`), a session is scoped to a framework's
        own context (Flask-SQLAlchemy's ``db.session``: the message names
        :func:`wsgi_sqla.flask_sqlalchemy.init_app`), or is a keyword removed before 1.0
        (``retries=``, ``replica_max_lag=``, ...): the message names the
        object that replaced it.
    :raises ValueError: when a session is given twice, or ``errors`` is
        neither ``"respond"`` nor ``"propagate"``.

    The engines bound to the sessions are made :func:`~wsgi_sqla.fork_safe`,
    so a server that imports the application before forking its workers
    (``gunicorn --preload``, uWSGI by default, with or without its fork-hook
    flags) never lets two processes share a connection.

    When the application returns the server's own ``wsgi.file_wrapper``
    object, the request's unit ends before the middleware returns (after-
    commit hooks run then, before the file is sent) and the server gets that
    object untouched, so it keeps its ``sendfile`` fast path.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *sessions: scoped_session[Any],
        commit_veto: CommitVeto = default_commit_veto,
        retry: Retry | None = None,
        replicas: Replicas | None = None,
        idempotency: IdempotencyKeys | None = None,
        errors: str = "respond",
        **removed: Never,
    ) -> None:
        refuse_removed("SessionMiddleware", removed)
        if not callable(app):
            raise TypeError(
                f"SessionMiddleware: app must be a WSGI application (a callable), got {app!r}"
            )
        if not callable(commit_veto):
            raise TypeError(
                "SessionMiddleware: commit_veto must be a callable "
                f"commit_veto(environ, status, headers) -> bool, got {commit_veto!r}"
            )
        if errors not in ("respond", "propagate"):
            raise ValueError(
                f"SessionMiddleware: errors must be 'respond' or 'propagate', got {errors!r}"
            )
        self.app = app
        self.errors = errors
        self.sessions: tuple[scoped_session[Any], ...] = own_sessions(
            sessions, "SessionMiddleware", per_request=True
        )
        self.commit_veto = commit_veto
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(
                f"SessionMiddleware: retry must be a wsgi_sqla.Retry (retry=Retry(3)) or None, "
                f"got {retry!r}"
            )
        #: How requests are run again after a transient error; ``None``: never.
        self.retry: Retry | None = retry if retry is not None and retry.retries else None
        self.replicas: Replicas | None = check_replicas(replicas, "SessionMiddleware")
        if idempotency is not None and not isinstance(idempotency, IdempotencyKeys):
            raise TypeError(
                "SessionMiddleware: idempotency must be a wsgi_sqla.IdempotencyKeys or None, "
                f"got {idempotency!r}"
            )
        #: The Idempotency-Key configuration; ``None``: the header means nothing.
        self.idempotency: IdempotencyKeys | None = idempotency
        #: Where the keys are stored: the table's session and engine.
        self.key_store: KeyStore | None = (
            None if idempotency is None else idempotency.store(self.sessions, "SessionMiddleware")
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            # Bound methods made per call, not stored: one kept on self would be a
            # reference cycle, and a dropped middleware would wait for the collector.
            if self.idempotency is not None and self.idempotency.applies(environ):
                return serve_keyed(self, environ, start_response)
            if self.retry is not None:
                return self.retry.run(self._attempt, environ, start_response)
            return self._attempt(environ, start_response)
        except Exception as exc:
            if self.errors == "propagate" or started(exc):
                raise
            return error_response(exc, environ, start_response)

    def _attempt(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Run the request once, as one unit of work (one attempt of the retry loop).

        With replicas the unit has a route, and the status and headers pass
        through it on their way to the server, so a request that committed a
        write adds its position token.
        """
        replicas = self.replicas
        if replicas is None:
            return RequestUnit(self, environ, start_response, UnitOfWork(self.sessions)).run()
        unit = replicas.request_unit(self.sessions, environ)
        routed = partial(unit.route.start_response, start_response)
        return RequestUnit(self, environ, routed, unit).run()
