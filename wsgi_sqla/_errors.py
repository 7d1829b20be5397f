"""What a client gets when a request fails before its response began.

The middleware answers ``500 Internal Server Error`` itself (``errors=
"respond"``, the default) with a body that reveals nothing, logs the
exception once, and raises it again from the response's ``close()``. Every
server then sends a status (uWSGI otherwise drops the connection without
one), and the server's own log and error-reporting middleware wrapped
around ours still see the exception.

What the middleware learns about an exception on its way out (the response
had begun, so it is too late for a 500; it was logged already) is recorded
beside the exception, never set on the application's exception object.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["ERROR_BODY", "ERROR_HEADERS", "ErrorResponse", "error_response", "record", "started"]

logger = logging.getLogger("wsgi_sqla")


class _Failure:
    """What a request knew of the exception it raised: kept beside it, not set on it.

    The request records it, only when it fails, in :data:`_failure` for the
    middleware's ``__call__`` to read. One slot per context: a failure that a
    retry swallowed is held until the next one (built-in exceptions take
    neither attributes of ours politely nor weak references).
    """

    __slots__ = ("error", "logged", "started")

    def __init__(self, error: BaseException) -> None:
        self.error = error
        #: the server was given a status already: too late for a 500
        self.started = False
        #: logged with its traceback already (a failed commit, a veto that raised)
        self.logged = False


_failure: contextvars.ContextVar[_Failure | None] = contextvars.ContextVar(
    "wsgi_sqla_failure", default=None
)


def record(error: BaseException) -> _Failure:
    """The record for ``error`` in this context, made if it is not the one kept."""
    failure = _failure.get()
    if failure is None or failure.error is not error:
        failure = _Failure(error)
        _failure.set(failure)
    return failure


def _known(error: BaseException) -> _Failure | None:
    failure = _failure.get()
    return failure if failure is not None and failure.error is error else None


def started(error: BaseException) -> bool:
    """Whether ``error`` was raised after the server was given a status."""
    failure = _known(error)
    return failure is not None and failure.started


ERROR_BODY = b"Internal Server Error\n"
ERROR_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(ERROR_BODY))),
]


def error_response(
    error: Exception, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer 500 for a request that failed before its response began; re-raise at close().

    Only for a request whose server has not been given a status yet.
    ``exc_info`` is not passed: nothing is being replaced, and uWSGI's
    ``start_response`` fails with a SystemError when given one.
    """
    start_response("500 Internal Server Error", list(ERROR_HEADERS))
    failure = _known(error)
    if failure is None or not failure.logged:
        logger.error(
            "%s %s failed; answered 500, the exception is raised again from close()",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            exc_info=error,
        )
    return ErrorResponse(error)


class ErrorResponse:
    """The 500's body; its ``close()`` raises the request's exception, once.

    Raising it there is what lets the server log it and lets middleware
    wrapped around ours (error reporting) see it, although the client
    already has its status.
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error

    def __iter__(self) -> Iterator[bytes]:
        return iter((ERROR_BODY,))

    def close(self) -> None:
        """Raise the request's exception (the first call only)."""
        error, self.error = self.error, None
        if error is not None:
            raise error
