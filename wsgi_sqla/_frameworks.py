"""Framework hooks: hand the exceptions a framework turns into a 500 to the middleware.

Flask and Bottle catch a view's exception and answer 500 themselves, so a
middleware around them never sees it. For a plain request that changes
nothing (the status is 500, so the unit rolls back), but a retrying
middleware (``SessionMiddleware(..., retry=Retry(N))``) needs the exception
itself to know whether running the request again can help. These hooks pass
it on through :func:`~wsgi_sqla.report_exception`; other frameworks call
that function from their own error handling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._retry import report_exception

__all__ = ["report_bottle_exceptions", "report_flask_exceptions"]


def report_flask_exceptions(app: Any) -> None:
    """Make the Flask ``app`` hand unhandled view exceptions to a retrying middleware.

    Connects :func:`report_exception` to Flask's ``got_request_exception``
    signal for ``app``. Exceptions that an ``errorhandler`` turns into a
    response are the application's business and are not reported.
    """
    import flask

    def _report(sender: object, exception: BaseException, **extra: object) -> None:
        report_exception(flask.request.environ, exception)

    flask.got_request_exception.connect(_report, app, weak=False)


def report_bottle_exceptions(app: Any) -> None:
    """Make the Bottle ``app`` hand exceptions from its routes to a retrying middleware.

    Installs a plugin that calls :func:`report_exception` with any
    exception a route callback raises, then lets Bottle handle it as it
    would have. (With ``app.catchall = False`` Bottle lets exceptions
    through to the middleware and no plugin is needed.)
    """
    app.install(_BottleReporter())


class _BottleReporter:
    """Bottle plugin (API 2): report what a route callback raises, then re-raise it."""

    name = "wsgi_sqla_report_exceptions"
    api = 2

    def apply(self, callback: Callable[..., Any], route: object) -> Callable[..., Any]:
        import bottle

        def _reporting(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except Exception as exc:
                report_exception(bottle.request.environ, exc)
                raise

        return _reporting
