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

With ``SessionMiddleware(app, session, retry=Retry(3))`` a request is run up
to four times. An attempt is retried when:

* it failed with an exception that ``when`` (by default
  :func:`~wsgi_sqla.is_transient_error`) calls transient, raised by the application
  or by the commit, or handed over by a framework hook
  (:func:`report_exception`) because the framework turned it into a 500;
* and nothing of its response went to the server yet;
* and its request body could be kept for replay: it had a
  ``Content-Length`` no larger than ``body_limit`` (or no body at
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

from ._context import current
from ._in_doubt import NotCommittedError
from ._input import CountedInput, refuse
from ._owners import check_seconds
from ._rejected import CommitInDoubtError, RejectedWorkError
from ._telemetry import facts, tracing
from ._transient import is_transient_error

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["DEFAULT_RETRY_BODY_LIMIT", "ReplayGuard", "Retry", "report_exception", "sleep"]

logger = logging.getLogger("wsgi_sqla")

#: Request bodies up to this many bytes (1 MiB) are buffered for replay.
DEFAULT_RETRY_BODY_LIMIT = 1 << 20

_ENVIRON_KEY = "wsgi_sqla.retry"
#: The attempt's number (1 for the first run) in the environ of a replayed request.
_ATTEMPT_KEY = "wsgi_sqla.attempt"
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
    retry=Retry(N))`` with retries left, nothing of the response has gone out
    yet, and ``when(exc)`` is true, the attempt is rolled back and the
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
    if isinstance(exc, CommitInDoubtError):
        return False  # the work may be in the database already: never run it twice
    if isinstance(exc, NotCommittedError):
        return True  # the database says nothing was committed: a lost connection, re-run
    if isinstance(exc, RejectedWorkError) and exc.error is not None:
        exc = exc.error  # nothing was committed: as safe to re-run as its first error
    try:
        return bool(retry_if(exc))
    except Exception:
        logger.exception("Retry(when=...) raised for %r; treating the error as not transient", exc)
        return False


_Attempt = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


def _count(name: str, value: object, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Retry: {name} must be an int ({meaning}), got {value!r}")
    if value < 0:
        raise ValueError(f"Retry: {name} must be >= 0 ({meaning}), got {value!r}")
    return value


class Retry:
    """How :class:`~wsgi_sqla.SessionMiddleware` runs a request again after a transient error::

        app.wsgi_app = SessionMiddleware(app.wsgi_app, db, retry=Retry(3))

    :param retries: how many times a request may run again after its first
        attempt failed with a transient error (``Retry(3)``: up to four
        runs). ``0`` never retries.
    :param when: ``when(exception) -> bool``, which errors are transient;
        defaults to :func:`~wsgi_sqla.is_transient_error` (PostgreSQL and
        MariaDB serialization failures, deadlocks, lock timeouts). Whatever
        it says, a ``COMMIT`` whose outcome is unknown
        (:class:`~wsgi_sqla.CommitInDoubtError`) is never run again, and one
        the database says did not take effect
        (:class:`~wsgi_sqla.NotCommittedError`, see
        :func:`~wsgi_sqla.resolve_in_doubt`) always is.
    :param body_limit: request bodies up to this many bytes (default 1 MiB)
        are buffered so that they can be replayed; a request with a larger
        body, or one of unknown length, runs once.
    :param backoff: seconds to wait before the first retry; doubled for each
        further one, jittered by ±50%, capped at one second.
    :raises TypeError: for an argument of the wrong type.
    :raises ValueError: for a negative count, limit or delay.
    """

    __slots__ = ("backoff", "body_limit", "retries", "when")

    def __init__(
        self,
        retries: int = 3,
        *,
        when: Callable[[BaseException], bool] = is_transient_error,
        body_limit: int = DEFAULT_RETRY_BODY_LIMIT,
        backoff: float = 0.01,
    ) -> None:
        self.retries: int = _count("retries", retries, "0 turns retrying off")
        if not callable(when):
            raise TypeError(f"Retry: when must be a callable when(exception) -> bool, got {when!r}")
        self.when: Callable[[BaseException], bool] = when
        self.body_limit: int = _count(
            "body_limit", body_limit, "bytes of request body buffered for replay"
        )
        seconds = check_seconds(backoff, "backoff", "Retry")
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(
                f"Retry: backoff must be a finite number of seconds >= 0, got {backoff!r}"
            )
        self.backoff: float = seconds

    def __repr__(self) -> str:
        return (
            f"Retry({self.retries}, when={self.when!r}, body_limit={self.body_limit}, "
            f"backoff={self.backoff})"
        )

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
            guard = ReplayGuard(start_response, self.when)
            env = _replay_environ(environ, body, number)
            env[_ENVIRON_KEY] = guard
            try:
                return attempt(env, guard.start_response)
            except Exception as exc:
                if guard.forwarded or not (exc is guard.reported or _asks_retry(self.when, exc)):
                    raise
                delay = self.delay(number)
                if tracing is not None:
                    tracing.retried(exc)
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
                    extra={"attempt": number, **facts("request", "rolled_back", "exception")},
                )
            sleep(delay)
        # The last attempt: whatever happens now stands.
        return attempt(_replay_environ(environ, body, self.retries + 1), start_response)

    def delay(self, number: int) -> float:
        """Seconds to wait after failed attempt ``number``: doubling, capped, jittered ±50%."""
        return min(self.backoff * 2.0 ** (number - 1), _MAX_DELAY) * _jitter.uniform(0.5, 1.5)


def _replay_environ(environ: WSGIEnvironment, body: bytes, number: int) -> WSGIEnvironment:
    """A copy of the request as the server gave it, with the body to read again."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    if tracing is not None:
        env[_ATTEMPT_KEY] = number
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
