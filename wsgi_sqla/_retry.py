"""Running a request again when its transaction failed for a transient reason.

Under SERIALIZABLE or REPEATABLE READ isolation, and whenever rows are
locked, a database may abort a perfectly correct transaction because a
concurrent one got in its way: PostgreSQL's serialization failures and
deadlocks, MariaDB's deadlocks and lock-wait timeouts. The standard answer
is to run the whole transaction again. For a web request that means running
the whole application again, which is only honest while the client has not
been told anything: :class:`~wsgi_sqla.SessionMiddleware` decides before
the first byte of the response reaches the server, so it knows exactly
when that is still true.

With ``SessionMiddleware(app, session, retries=3)`` a request is run up to
four times. An attempt is retried when:

* it failed with an exception that ``retry_if`` (by default
  :func:`~wsgi_sqla.is_transient_error`) calls transient, raised by the application
  or by the commit, or handed over by a framework hook
  (:func:`report_exception`) because the framework turned it into a 500;
* and nothing of its response went to the server yet;
* and its request body could be kept for replay: it had a
  ``Content-Length`` no larger than ``retry_body_limit`` (or no body at
  all). A body of unknown length (chunked) is never read ahead, and such a
  request runs once. A body that ends before its ``Content-Length``, or
  whose reading fails, is not replayed either: the request is answered
  ``400 Bad Request`` without running the application (see ``_input.py``).

Each attempt is an ordinary request: a new :class:`~wsgi_sqla.UnitOfWork`
that rolls back and removes the sessions on failure, a fresh shallow copy of
the WSGI environ, and the buffered body in a new ``wsgi.input``. Between
attempts the middleware sleeps a short, jittered, doubling delay so that
the transactions that collided do not collide again in lock-step. When the
retries are used up, the last attempt's outcome stands: its exception
propagates to the server, or the framework's 500 response is sent.

Flask and Bottle catch view exceptions and answer 500 themselves, so the
middleware never sees them. :func:`~wsgi_sqla.report_flask_exceptions` and
:func:`~wsgi_sqla.report_bottle_exceptions` install the small hooks that
hand such an exception to the middleware; other frameworks can call
:func:`report_exception` from their error handling.

A retried request runs the application again from the start: anything it
did outside the database (sending mail, calling another service) happens
again. Keep such effects in :func:`~wsgi_sqla.after_commit` hooks, which
run only for the attempt that committed.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._input import CountedInput, refuse
from ._unit import check_seconds, current

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["DEFAULT_RETRY_BODY_LIMIT", "ReplayGuard", "RetryPolicy", "report_exception", "sleep"]

logger = logging.getLogger("wsgi_sqla")

#: Request bodies up to this many bytes (1 MiB) are buffered for replay.
DEFAULT_RETRY_BODY_LIMIT = 1 << 20

_ENVIRON_KEY = "wsgi_sqla.retry"
_MAX_DELAY = 1.0
#: How the loop waits between attempts; the tests that look at the delays replace it.
sleep: Callable[[float], object] = time.sleep
# Not the global generator: an application may seed that, and workers forked
# from one master must not wait in lock-step.
_jitter = random.SystemRandom()


def report_exception(environ: WSGIEnvironment, exc: BaseException) -> None:
    """Hand ``exc``, which the framework is turning into a 500, to a retrying middleware.

    Call it from the framework's error handling with the environ of the
    request. When the request runs under ``SessionMiddleware(...,
    retries=N)`` with retries left, nothing of the response has gone out
    yet, and ``retry_if(exc)`` is true, the attempt is rolled back and the
    request runs again; the framework's error response is dropped.
    Otherwise (no retrying middleware, last attempt, not transient) this
    does nothing and the framework's response goes out as usual.
    """
    guard = environ.get(_ENVIRON_KEY)
    if isinstance(guard, ReplayGuard):
        guard.report(exc)


class ReplayGuard:
    """Between one attempt and the server: while nothing passed it, the attempt can be re-run."""

    __slots__ = ("_retry_if", "_start_response", "forwarded", "reported")

    def __init__(
        self, start_response: StartResponse, retry_if: Callable[[BaseException], bool]
    ) -> None:
        self._start_response = start_response
        self._retry_if = retry_if
        self.forwarded = False
        self.reported: BaseException | None = None

    def report(self, exc: BaseException) -> None:
        """Mark the attempt for a re-run if ``exc`` is transient and nothing went out yet."""
        if self.forwarded or not _asks_retry(self._retry_if, exc):
            return
        self.reported = exc
        unit = current.get()
        if unit is not None:
            # Whatever the status and the veto say, this attempt must not commit.
            unit.force("rollback")

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        """Forward to the server, unless the attempt was reported: then fail it."""
        reported = self.reported
        if reported is not None:
            # The attempt was rolled back (see report()); fail it so that it is re-run.
            raise reported
        self.forwarded = True
        return self._start_response(status, headers, exc_info)


def _asks_retry(retry_if: Callable[[BaseException], bool], exc: BaseException) -> bool:
    try:
        return bool(retry_if(exc))
    except Exception:
        logger.exception("retry_if(%r) raised; treating the error as not transient", exc)
        return False


_Attempt = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


def _count(name: str, value: object, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SessionMiddleware: {name} must be an int ({meaning}), got {value!r}")
    if value < 0:
        raise ValueError(f"SessionMiddleware: {name} must be >= 0 ({meaning}), got {value!r}")
    return value


class RetryPolicy:
    """How :class:`~wsgi_sqla.SessionMiddleware` re-runs requests, from its retry keywords.

    :raises TypeError: for a keyword of the wrong type.
    :raises ValueError: for a negative count, limit or delay.
    """

    __slots__ = ("backoff", "body_limit", "retries", "retry_if")

    def __init__(
        self,
        retries: int,
        retry_if: Callable[[BaseException], bool],
        body_limit: int,
        backoff: float,
    ) -> None:
        self.retries: int = _count("retries", retries, "0 turns retrying off")
        if not callable(retry_if):
            raise TypeError(
                "SessionMiddleware: retry_if must be a callable retry_if(exception) -> bool, "
                f"got {retry_if!r}"
            )
        self.retry_if: Callable[[BaseException], bool] = retry_if
        self.body_limit: int = _count(
            "retry_body_limit", body_limit, "bytes of request body buffered for replay"
        )
        seconds = check_seconds(backoff, "retry_backoff", "SessionMiddleware")
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(
                f"SessionMiddleware: retry_backoff must be a finite number of seconds >= 0, "
                f"got {backoff!r}"
            )
        self.backoff: float = seconds

    def run(
        self, attempt: _Attempt, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Call ``attempt(environ, start_response)``, again while it fails transiently."""
        try:
            body = _buffer_body(environ, self.body_limit)
        except _TruncatedBody as short:
            cut = short.watched
            return refuse(environ, start_response, cut.received, cut.announced, cut.failure)
        if body is None:
            return attempt(environ, start_response)
        for number in range(1, self.retries + 1):
            guard = ReplayGuard(start_response, self.retry_if)
            env = _replay_environ(environ, body)
            env[_ENVIRON_KEY] = guard
            try:
                return attempt(env, guard.start_response)
            except Exception as exc:
                if guard.forwarded or not (
                    exc is guard.reported or _asks_retry(self.retry_if, exc)
                ):
                    raise
                delay = self.delay(number)
                logger.warning(
                    "%s %s: attempt %d of %d failed with a transient error (%s: %s); "
                    "running it again in %.0f ms",
                    environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"),
                    number,
                    self.retries + 1,
                    type(exc).__name__,
                    _first_line(exc),
                    delay * 1000,
                )
            sleep(delay)
        # The last attempt: whatever happens now stands.
        return attempt(_replay_environ(environ, body), start_response)

    def delay(self, number: int) -> float:
        """Seconds to wait after failed attempt ``number``: doubling, capped, jittered ±50%."""
        return min(self.backoff * 2.0 ** (number - 1), _MAX_DELAY) * _jitter.uniform(0.5, 1.5)


def _replay_environ(environ: WSGIEnvironment, body: bytes) -> WSGIEnvironment:
    """A copy of the request as the server gave it, with the body to read again."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    return env


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "")


class _TruncatedBody(Exception):
    """The request body ended before its ``Content-Length``, or reading it failed."""

    def __init__(self, watched: CountedInput) -> None:
        super().__init__(watched.received, watched.announced)
        self.watched = watched


def _buffer_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The whole request body, or ``None`` when it cannot be kept for replay.

    :raises _TruncatedBody: when the body is shorter than its ``Content-Length``
        or reading it raised; such a body is never replayed as if complete.
    """
    length = environ.get("CONTENT_LENGTH")
    if not length:
        if environ.get("HTTP_TRANSFER_ENCODING"):
            return None  # a body of unknown length (chunked)
        return b""
    try:
        size = int(length)
    except ValueError:
        return None
    if size < 0 or size > limit:
        return None
    if size == 0:
        return b""
    watched = CountedInput(environ["wsgi.input"], size)
    try:
        body = watched.read()
    except Exception:
        raise _TruncatedBody(watched) from None  # the client went away mid-body
    if watched.truncated:
        raise _TruncatedBody(watched)
    return body
