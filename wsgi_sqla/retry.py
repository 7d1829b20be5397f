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
  :func:`is_transient_error`) calls transient, raised by the application
  or by the commit, or handed over by a framework hook
  (:func:`report_exception`) because the framework turned it into a 500;
* and nothing of its response went to the server yet;
* and its request body could be kept for replay: it had a
  ``Content-Length`` no larger than ``retry_body_limit`` (or no body at
  all). A body of unknown length (chunked) is never read ahead, and such a
  request runs once.

Each attempt is an ordinary request: a new :class:`~wsgi_sqla.UnitOfWork`
that rolls back and removes the sessions on failure, a fresh shallow copy of
the WSGI environ, and the buffered body in a new ``wsgi.input``. Between
attempts the middleware sleeps a short, jittered, doubling delay so that
the transactions that collided do not collide again in lock-step. When the
retries are used up, the last attempt's outcome stands: its exception
propagates to the server, or the framework's 500 response is sent.

Flask and Bottle catch view exceptions and answer 500 themselves, so the
middleware never sees them. :func:`report_flask_exceptions` and
:func:`report_bottle_exceptions` install the small hooks that hand such an
exception to the middleware; other frameworks can call
:func:`report_exception` from their error handling.

A retried request runs the application again from the start: anything it
did outside the database (sending mail, calling another service) happens
again. Keep such effects in :func:`~wsgi_sqla.after_commit` hooks, which
run only for the attempt that committed.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from .unit import current_unit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "DEFAULT_RETRY_BODY_LIMIT",
    "MYSQL_TRANSIENT_ERRORS",
    "POSTGRESQL_TRANSIENT_SQLSTATES",
    "RetryPolicy",
    "is_transient_error",
    "report_bottle_exceptions",
    "report_exception",
    "report_flask_exceptions",
]

logger = logging.getLogger("wsgi_sqla")

#: PostgreSQL SQLSTATEs after which running the transaction again can succeed:
#: serialization_failure, deadlock_detected, lock_not_available (``NOWAIT``
#: or ``lock_timeout``).
POSTGRESQL_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})

#: MariaDB / MySQL error numbers after which running the transaction again
#: can succeed: ER_LOCK_WAIT_TIMEOUT (1205) and ER_LOCK_DEADLOCK (1213).
MYSQL_TRANSIENT_ERRORS = frozenset({1205, 1213})

#: Request bodies up to this many bytes (1 MiB) are buffered for replay.
DEFAULT_RETRY_BODY_LIMIT = 1 << 20

_ENVIRON_KEY = "wsgi_sqla.retry"
_MAX_DELAY = 1.0
_sleep = time.sleep  # replaced by the tests that look at the delays
# Not the global generator: an application may seed that, and workers forked
# from one master must not wait in lock-step.
_jitter = random.SystemRandom()


def is_transient_error(exc: BaseException) -> bool:
    """``True`` when ``exc`` says the database aborted a transaction that may succeed if re-run.

    Looks at ``exc`` and its explicit causes (``raise ... from ...``) for a
    :class:`sqlalchemy.exc.DBAPIError` whose driver error (``.orig``)
    carries one of :data:`POSTGRESQL_TRANSIENT_SQLSTATES` (psycopg's
    ``sqlstate``, psycopg2's ``pgcode``) or one of
    :data:`MYSQL_TRANSIENT_ERRORS` (the error number drivers put first in
    ``args``, or in ``errno``). Everything else, lost connections included,
    is not transient: when a connection drops during COMMIT nobody knows
    whether the transaction committed, so running it again could apply it
    twice.
    """
    seen: BaseException | None = exc
    for _ in range(16):  # a bound, in case of a cycle of causes
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and _driver_error_is_transient(seen.orig):
            return True
        seen = seen.__cause__
    return False


def _driver_error_is_transient(error: object) -> bool:
    # Checked independently: PyMySQL also carries a SQLSTATE, and MariaDB's
    # lock-wait timeout has the generic one (HY000).
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate in POSTGRESQL_TRANSIENT_SQLSTATES:
        return True
    number = getattr(error, "errno", None)
    if not isinstance(number, int):
        args = getattr(error, "args", ())
        number = args[0] if args else None
    return isinstance(number, int) and number in MYSQL_TRANSIENT_ERRORS


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
    gate = environ.get(_ENVIRON_KEY)
    if isinstance(gate, _Gate):
        gate.report(exc)


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
        import bottle  # type: ignore[import-untyped]

        def _reporting(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except Exception as exc:
                report_exception(bottle.request.environ, exc)
                raise

        return _reporting


class _Gate:
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
        if self.forwarded or not _safely(self._retry_if, exc):
            return
        self.reported = exc
        unit = current_unit()
        if unit is not None:
            # Whatever the status and the veto say, this attempt must not commit.
            unit.outcome = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        reported = self.reported
        if reported is not None:
            # The attempt was rolled back (see report()); fail it so that it is re-run.
            raise reported
        self.forwarded = True
        return self._start_response(status, headers, exc_info)


def _safely(retry_if: Callable[[BaseException], bool], exc: BaseException) -> bool:
    try:
        return bool(retry_if(exc))
    except Exception:
        logger.exception("retry_if(%r) raised; treating the error as not transient", exc)
        return False


_Attempt = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


class RetryPolicy:
    """How :class:`~wsgi_sqla.SessionMiddleware` re-runs requests (built from its keywords)."""

    __slots__ = ("backoff", "body_limit", "retries", "retry_if")

    def __init__(
        self,
        retries: int,
        retry_if: Callable[[BaseException], bool],
        body_limit: int,
        backoff: float,
    ) -> None:
        self.retries = retries
        self.retry_if = retry_if
        self.body_limit = body_limit
        self.backoff = backoff

    def run(
        self, attempt: _Attempt, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Call ``attempt(environ, start_response)``, again while it fails transiently."""
        body = _buffer_body(environ, self.body_limit)
        if body is None:
            return attempt(environ, start_response)
        for number in range(1, self.retries + 1):
            gate = _Gate(start_response, self.retry_if)
            env = _fresh(environ, body)
            env[_ENVIRON_KEY] = gate
            try:
                return attempt(env, gate.start_response)
            except Exception as exc:
                if gate.forwarded or not (exc is gate.reported or _safely(self.retry_if, exc)):
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
            _sleep(delay)
        # The last attempt: whatever happens now stands.
        return attempt(_fresh(environ, body), start_response)

    def delay(self, number: int) -> float:
        """Seconds to wait after failed attempt ``number``: doubling, capped, jittered ±50%."""
        return min(self.backoff * 2.0 ** (number - 1), _MAX_DELAY) * _jitter.uniform(0.5, 1.5)


def retry_policy(
    retries: int, retry_if: Callable[[BaseException], bool], body_limit: int, backoff: float
) -> RetryPolicy | None:
    """Check :class:`~wsgi_sqla.SessionMiddleware`'s retry keywords; ``None`` when off."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TypeError(
            "SessionMiddleware: retries must be an int >= 0 (0 turns retrying off), "
            f"got {retries!r}"
        )
    if not callable(retry_if):
        raise TypeError(
            "SessionMiddleware: retry_if must be a callable retry_if(exception) -> bool, "
            f"got {retry_if!r}"
        )
    if isinstance(body_limit, bool) or not isinstance(body_limit, int) or body_limit < 0:
        raise TypeError(
            "SessionMiddleware: retry_body_limit must be an int >= 0 (bytes of request body "
            f"buffered for replay), got {body_limit!r}"
        )
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise TypeError(
            f"SessionMiddleware: retry_backoff must be a number of seconds >= 0, got {backoff!r}"
        )
    if retries == 0:
        return None
    return RetryPolicy(retries, retry_if, body_limit, float(backoff))


def _fresh(environ: WSGIEnvironment, body: bytes) -> WSGIEnvironment:
    """A copy of the request as the server gave it, with the body to read again."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    return env


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "")


def _buffer_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The whole request body, or ``None`` when it cannot be kept for replay."""
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
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break  # the client sent less than it announced; replay what came
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
