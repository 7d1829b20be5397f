"""A keyed request, from its ``Idempotency-Key`` header to its recorded response.

:class:`~wsgi_sqla.SessionMiddleware` hands a request here only when it has
``idempotency=`` configured, the method is one of its ``methods`` and the
request carries a key (or keys are ``required``). Then:

1. the key is parsed: an RFC 8941 string (``"8e03978e"``) or a bare token
   (``8e03978e``), 1 to 255 characters, else ``400``; no key while
   ``required``: ``400``;
2. the body is read, up to ``body_limit`` (``413`` above it), and the
   request's fingerprint is taken: method, path, query, ``Content-Type``
   and the body's SHA-256;
3. the key is claimed (see ``_idempotency.py``): a committed record with the
   same fingerprint is replayed, with ``Idempotent-Replayed: true``, without
   running the application or any after-commit hook; another fingerprint
   gets ``422``; a claim whose lease runs gets ``409`` at once;
4. the application runs in a unit of work on the primary (with
   ``retry=``, as many attempts as it takes), its response is buffered
   whole, and, when the unit is to commit, the response is recorded in the
   unit's transaction, so work done while producing the body belongs to the
   unit and the record commits with it;
5. when the response is closed, a claim that did not become a committed
   record is deleted, so a retry runs the application again.

Every answer of the middleware's own (400, 409, 413, 422) is
``application/problem+json`` (RFC 9457) whose ``title`` and ``detail`` say
what the client should do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from ._context import current
from ._idempotency import KeyStore, StoredResponse, stored_response
from ._in_doubt import resolve_by
from ._input import refuse
from ._request import RequestUnit
from ._retry import _buffer_body, _TruncatedBody
from ._telemetry import idempotency
from ._unit import UnitOfWork

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ._middleware import SessionMiddleware

__all__ = ["parse_key", "serve_keyed"]

logger = logging.getLogger("wsgi_sqla")

#: The header a replayed response carries.
REPLAYED_HEADER = ("Idempotent-Replayed", "true")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# RFC 8941's sf-string (printable ASCII, \" and \\ escaped); bare keys are RFC 9110 token
# characters plus sf-token's ":" and "/", a digit first too (UUIDs).
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:/]+")
_UNESCAPE = re.compile(r"\\([\"\\])")
_DOCS = "https://wsgi-sqla.readthedocs.io/en/latest/exactly-once.html#"


def parse_key(raw: str) -> str | None:
    """The key of an ``Idempotency-Key`` header value, or ``None`` when it is malformed.

    An RFC 8941 sf-string (``"8e03978e"``), or a bare token as Stripe's
    clients send (``8e03978e``: RFC 9110 token characters, ``:`` and ``/``);
    surrounding spaces are ignored; the key must have 1 to 255 characters.
    """
    value = raw.strip(" \t")
    quoted = _SF_STRING.fullmatch(value)
    if quoted is not None:
        key = _UNESCAPE.sub(r"\1", quoted.group(1))
    elif _BARE.fullmatch(value):
        key = value
    else:
        return None
    return key if 0 < len(key) <= 255 else None


class _Problem(NamedTuple):
    status: str
    anchor: str
    title: str
    detail: str


MISSING = _Problem(
    "400 Bad Request",
    "key-required",
    "Idempotency-Key required",
    "This request must carry an Idempotency-Key header. Send a new unique value (a random "
    'UUID) as Idempotency-Key: "<value>", and send the same value again only to retry '
    "this same request.",
)
MALFORMED = _Problem(
    "400 Bad Request",
    "malformed-key",
    "Malformed Idempotency-Key",
    'The Idempotency-Key header must be a quoted string such as "8e03978e" (or a bare '
    "token) of 1 to 255 printable ASCII characters. Fix the header and send the request "
    "again.",
)
TOO_LARGE = _Problem(
    "413 Content Too Large",
    "body-too-large",
    "Request body too large for an Idempotency-Key",
    "Requests with an Idempotency-Key may have a body of at most {limit} bytes. Send a "
    "smaller body, or send the request without the key.",
)
MISMATCH = _Problem(
    "422 Unprocessable Content",
    "key-reused",
    "Idempotency-Key already used for another request",
    "This Idempotency-Key was used for a different request (method, path, query, "
    "Content-Type or body). Use a new key for a new request; reuse a key only to retry "
    "exactly the same request.",
)
IN_PROGRESS = _Problem(
    "409 Conflict",
    "in-progress",
    "A request with this Idempotency-Key is in progress",
    "The first request with this Idempotency-Key has not finished yet. Retry the same "
    "request in a moment: you will get its response once it has completed.",
)
NOT_STORED = _Problem(
    "409 Conflict",
    "response-not-stored",
    "Request already completed; its response was not stored",
    "The request with this Idempotency-Key completed and committed ({status}), but its "
    "response was too large to store, so it cannot be replayed. It will not run again: "
    "fetch the resource it created or changed instead of retrying.",
)


def problem(start_response: StartResponse, which: _Problem, **values: object) -> list[bytes]:
    """Answer ``which`` as ``application/problem+json`` (RFC 9457)."""
    detail = which.detail.format(**values) if values else which.detail
    body = json.dumps(
        {
            "type": _DOCS + which.anchor,
            "title": which.title,
            "status": int(which.status[:3]),
            "detail": detail,
        }
    ).encode()
    headers = [("Content-Type", "application/problem+json"), ("Content-Length", str(len(body)))]
    if which is IN_PROGRESS:
        headers.append(("Retry-After", "1"))
    start_response(which.status, headers)
    return [body]


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The whole request body, or ``None`` when it is larger than ``limit``.

    :raises _TruncatedBody: when it ends before its ``Content-Length``.
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size > limit:
            return None
        return _buffer_body(environ, limit) or b""
    if not environ.get("HTTP_TRANSFER_ENCODING"):
        return b""
    stream, received = environ["wsgi.input"], 0
    chunks: list[bytes] = []
    while received <= limit:
        chunk = stream.read(min(65536, limit + 1 - received))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
    return None


def fingerprint(environ: WSGIEnvironment, body: bytes) -> str:
    """SHA-256 of the method, path, query, ``Content-Type`` and the body's own SHA-256."""
    parts = (
        environ.get("REQUEST_METHOD", ""),
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        environ.get("QUERY_STRING", ""),
        environ.get("CONTENT_TYPE", ""),
        hashlib.sha256(body).hexdigest(),
    )
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def serve_keyed(
    middleware: SessionMiddleware, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a keyed request: a problem, a replay, or one run of the application."""
    store = middleware.key_store
    assert store is not None
    raw = environ.get("HTTP_IDEMPOTENCY_KEY")
    if raw is None:
        return problem(start_response, MISSING)
    key = parse_key(raw)
    if key is None:
        return problem(start_response, MALFORMED)
    try:
        body = _read_body(environ, store.keys.body_limit)
    except _TruncatedBody as short:
        cut = short.watched
        return refuse(environ, start_response, cut.received, cut.announced, cut.failure)
    if body is None:
        return problem(start_response, TOO_LARGE, limit=store.keys.body_limit)
    scope = store.keys.scope(environ)
    if not isinstance(scope, str):
        raise TypeError(f"IdempotencyKeys: scope(environ) must return a str, got {scope!r}")
    printed = fingerprint(environ, body)
    claim = store.claim(scope, key, printed)
    if claim.token is None:
        if claim.fingerprint != printed:
            idempotency("conflict")
            return problem(start_response, MISMATCH)
        stored = claim.response
        if stored is None:
            idempotency("conflict")
            return problem(start_response, IN_PROGRESS)
        idempotency("replayed")
        if stored.body is None:
            return problem(start_response, NOT_STORED, status=stored.status)
        start_response(stored.status, [*stored.headers, REPLAYED_HEADER])
        return [stored.body]
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    env["CONTENT_LENGTH"] = str(len(body))
    env.pop("HTTP_TRANSFER_ENCODING", None)
    run = KeyedRun(middleware, store, scope, key, claim.token)
    try:
        if middleware.retry is not None:
            response = middleware.retry.run(run.attempt, env, start_response)
        else:
            response = run.attempt(env, start_response)
    except BaseException:
        run.release()
        raise
    return _Releasing(response, run)


class KeyedRun:
    """One keyed request that holds its claim: what :class:`RequestUnit` runs as its app.

    It stands for the middleware towards :class:`RequestUnit` (``app`` and
    ``commit_veto``), buffering the application's response and recording it
    in the unit's transaction when the unit is to commit.
    """

    __slots__ = ("committed", "key", "middleware", "scope", "store", "token")

    def __init__(
        self,
        middleware: SessionMiddleware,
        store: KeyStore,
        scope: str,
        key: str,
        token: str,
    ) -> None:
        self.middleware: SessionMiddleware = middleware
        self.store: KeyStore = store
        self.scope: str = scope
        self.key: str = key
        self.token: str = token
        #: set by an after-commit hook once the unit holding the record committed
        self.committed: bool = False

    def commit_veto(
        self, environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]
    ) -> bool:
        """The middleware's veto."""
        return self.middleware.commit_veto(environ, status, headers)

    def attempt(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Run one attempt as a unit of work, always on the primary when there are replicas."""
        middleware = self.middleware
        replicas = middleware.replicas
        if replicas is None:
            return RequestUnit(self, environ, start_response, UnitOfWork(middleware.sessions)).run()
        unit = replicas.unit(
            middleware.sessions,
            replica_ok=False,
            token=replicas.tokens.read(environ),
            what="keyed request",
        )
        routed = partial(unit.route.start_response, start_response)
        return RequestUnit(self, environ, routed, unit).run()

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The application, its response buffered whole and recorded when it commits."""
        seen: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if seen and not (exc_info is not None and exc_info[0] is not None):
                raise RuntimeError(
                    "SessionMiddleware: start_response() was called a second time without "
                    "exc_info (PEP 3333)"
                )
            seen[:] = [(status, headers)]
            return chunks.append

        idempotency("executed")
        result = self.middleware.app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not seen:
            raise RuntimeError(
                "SessionMiddleware: the WSGI application returned without calling "
                "start_response(); nothing was committed"
            )
        status, headers = seen[0]
        body = b"".join(chunks)
        unit = current.get()
        assert unit is not None
        commit, _reason = unit.decide(self.commit_veto, environ, status, headers)
        if commit:
            kept = [(name, value) for name, value in headers if name.lower() not in _HOP_BY_HOP]
            limit = self.store.keys.response_limit
            response = StoredResponse(status, kept, body if len(body) <= limit else None)
            if not self.store.record(self.scope, self.key, self.token, response):
                logger.warning(
                    "%s %s: its Idempotency-Key claim outlived its lease and was taken over; "
                    "rolled back, answered 409",
                    environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"),
                )
                unit.force("rollback")
                return problem(start_response, IN_PROGRESS)
            unit.add_hook(self._mark_committed, (), {})
            # The record commits with the work: finding it settles a COMMIT in doubt.
            resolve_by(unit, self.store.scoped.registry(), self._recorded)
        start_response(status, headers)
        return [body]

    def _recorded(self) -> tuple[bool, str]:
        """Whether this request's record is committed, asked on a fresh connection."""
        found = stored_response(
            self.store.keys, self.store.engine, self.scope, self.key, self.token
        )
        return found is not None, (
            f"the record of Idempotency-Key {self.key!r} {'found' if found else 'not found'}"
        )

    def _mark_committed(self) -> None:
        self.committed = True

    def release(self) -> None:
        """Delete the claim unless it became a committed record; failures are only logged."""
        if self.committed:
            return
        try:
            self.store.release(self.scope, self.key, self.token)
        except Exception:
            logger.exception(
                "deleting the Idempotency-Key claim failed; the key is free again when its "
                "lease is over"
            )


class _Releasing:
    """The keyed response for the server: closing it releases an uncommitted claim."""

    __slots__ = ("_response", "_run")

    def __init__(self, response: Iterable[bytes], run: KeyedRun) -> None:
        self._response = response
        self._run = run

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._response)

    def close(self) -> None:
        """Close the response (which ends its unit), then release a claim left uncommitted."""
        try:
            close: Callable[[], object] | None = getattr(self._response, "close", None)
            if close is not None:
                close()
        finally:
            self._run.release()
