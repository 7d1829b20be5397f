"""One request's life under the middleware: the start_response proxy and the iterable.

:class:`RequestUnit` is created by :class:`~wsgi_sqla.SessionMiddleware` for
each attempt of a request, with the unit of work it runs in. It stands
between the server and the application: it records the status the
application chose, decides (commit or roll back) before the first byte of
the response reaches the server, hands the server a PEP 3333 iterable that
keeps the unit current while the body streams, and closes the application's
iterable and ends the unit exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import record
from ._in_doubt import NotCommittedError
from ._input import (
    REFUSED_BODY,
    REFUSED_HEADERS,
    REFUSED_STATUS,
    CountedInput,
    refuse,
    warn_truncated,
    watch_input,
)
from ._rejected import CommitInDoubtError, RejectedWorkError
from ._telemetry import default_veto, facts, tracing, unit_facts
from ._unit import UnitOfWork, current

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["RequestUnit"]

logger = logging.getLogger("wsgi_sqla")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
_OptExcInfo = _ExcInfo | tuple[None, None, None] | None
_Headers = list[tuple[str, str]]
_END: Any = object()


class Runs(Protocol):
    """What a request runs: the application and the veto (the middleware, or a keyed run)."""

    @property
    def app(self) -> WSGIApplication: ...

    @property
    def commit_veto(self) -> Callable[[WSGIEnvironment, str, _Headers], bool]: ...


class RequestUnit:
    """One request: when to apply its unit's rules, and the iterable handed to the server.

    The rules come from the :class:`~wsgi_sqla.UnitOfWork` it holds; this
    class is the ``start_response`` proxy, the PEP 3333 iterable around the
    application's, and the points in the request's life at which the unit
    decides (:meth:`_decide`) and ends (:meth:`_abort`, :meth:`close`).
    """

    __slots__ = (
        "_app_iter",
        "_closed",
        "_committed",
        "_decided",
        "_environ",
        "_exc_info",
        "_failure",
        "_file_wrapper",
        "_files",
        "_finished",
        "_first",
        "_headers",
        "_input",
        "_iterator",
        "_middleware",
        "_plain",
        "_server_start_response",
        "_server_write",
        "_status",
        "unit",
    )

    #: the request body's counter, set by run(); ``None`` for a request without a body
    _input: CountedInput | None

    def __init__(
        self,
        middleware: Runs,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        unit: UnitOfWork,
    ) -> None:
        self.unit = unit
        self._middleware = middleware
        self._environ = environ
        self._server_start_response = start_response
        self._server_write: Callable[[bytes], object] | None = None
        self._status: str | None = None
        self._headers: _Headers = []
        self._exc_info: _OptExcInfo = None
        self._decided = False
        self._committed = False
        self._failure: BaseException | None = None
        self._app_iter: Iterable[bytes] | None = None
        self._iterator: Iterator[bytes] | None = None
        self._plain = False
        self._first: bytes | None = None
        self._finished = False
        self._closed = False
        self._file_wrapper: Callable[..., Any] | None = None
        self._files: list[object] | None = None

    # -- running the application -------------------------------------------

    def run(self) -> Iterable[bytes]:
        """Call the application, decide, and return the iterable for the server."""
        token = current.set(self.unit)
        environ = self._environ
        if tracing is not None:
            tracing.request(self.unit._trace, environ)
        # A body shorter than its Content-Length is never committed (see _input.py).
        length = environ.get("CONTENT_LENGTH")
        self._input = watch_input(environ, length) if length and length != "0" else None
        try:
            try:
                wrapper = environ.get("wsgi.file_wrapper")
                if wrapper is None:
                    self._app_iter = app_iter = self._middleware.app(environ, self._start_response)
                else:
                    self._file_wrapper = wrapper
                    environ["wsgi.file_wrapper"] = self._wrap_file
                    try:
                        self._app_iter = app_iter = self._middleware.app(
                            environ, self._start_response
                        )
                    finally:
                        environ["wsgi.file_wrapper"] = wrapper
                    if (
                        self._files is not None
                        and self._is_server_file(app_iter)
                        and not self._truncated()
                    ):
                        return self._hand_over_file(app_iter)
                try:
                    self._iterator = iter(app_iter)
                except TypeError:
                    raise TypeError(
                        "SessionMiddleware: the WSGI application returned "
                        f"{type(app_iter).__qualname__!r}, which is not iterable; it must "
                        "return an iterable of bytes (PEP 3333)"
                    ) from None
                # A list or tuple runs no application code while it is iterated, so it
                # streams without the unit set around each chunk: 33.6k instructions a
                # request against 40.9k for a one-chunk list subclass (callgrind, no database).
                self._plain = type(app_iter) in (list, tuple)
                if self._status is None:
                    # start_response is called lazily, from inside the body.
                    self._first = next(self._iterator, None)
                    if self._status is None:
                        raise RuntimeError(
                            "SessionMiddleware: the WSGI application returned (and began its "
                            "body) without calling start_response(); nothing was committed"
                        )
                if self._failure is not None:
                    raise self._failure
                if not self._decided:
                    self._decide()
                if self._input is not None and self._input.refused:
                    # The 400's body replaces the application's, which close() still closes.
                    self._first, self._iterator, self._plain = REFUSED_BODY, iter(()), True
            except BaseException as exc:
                if self._server_write is not None:
                    record(exc).started = True
                self._abort()
                watched = self._input
                if (
                    watched is not None
                    and watched.truncated
                    and not watched.refused
                    and self._server_write is None
                    and isinstance(exc, Exception)
                ):
                    # It raised after its body was cut short (often because of that): 400.
                    watched.refused = True
                    return refuse(
                        environ,
                        self._server_start_response,
                        watched.received,
                        watched.announced,
                        watched.failure or f"the application raised {type(exc).__name__}",
                    )
                raise
        finally:
            current.reset(token)
        return self

    # -- the server's file wrapper: handed back untouched -------------------

    def _wrap_file(self, filelike: Any, *args: Any) -> object:
        """The server's ``wsgi.file_wrapper``, remembering exactly what it returned."""
        assert self._file_wrapper is not None
        wrapped = self._file_wrapper(filelike, *args)
        if self._files is None:
            self._files = []
        self._files.append(wrapped)
        return wrapped

    def _is_server_file(self, app_iter: object) -> bool:
        # Identity, not isinstance: uWSGI's wrapper returns the file object itself.
        assert self._files is not None
        return self._status is not None and any(app_iter is f for f in self._files)

    def _hand_over_file(self, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        """Decide, end the unit, and give the server its own file wrapper back.

        Iterating it runs no application code, so the unit can end now: the
        server's fast path (``sendfile``) is kept, and the after-commit hooks
        run before the file is sent. The server closes the file.
        """
        if self._failure is not None:
            raise self._failure
        if not self._decided:
            self._decide()
        self._closed = True
        self.unit.end()
        return app_iter

    def _start_response(
        self, status: str, headers: _Headers, exc_info: _OptExcInfo = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[0] is not None:
            if self._decided:
                # The decision was taken on the earlier status; it cannot change now.
                try:
                    raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
        elif self._status is not None:
            raise RuntimeError(
                "SessionMiddleware: start_response() was called a second time without "
                "exc_info (PEP 3333)"
            )
        self._status = status
        self._headers = headers
        self._exc_info = exc_info
        return self._write

    def _write(self, data: bytes) -> None:
        if not self._decided:
            self._decide()
        assert self._server_write is not None
        self._server_write(data)

    def _decide(self) -> None:
        """Commit or roll back, then hand the status and headers to the server."""
        self._decided = True
        if self._truncated():
            self._refuse()
            return
        status = self._status
        assert status is not None
        unit = self.unit
        if tracing is not None:
            tracing.responded(unit._trace, status, self._middleware)
        try:
            commit, reason = unit.decide(
                self._middleware.commit_veto, self._environ, status, self._headers
            )
        except BaseException as exc:
            self._failure = exc
            logger.exception(
                "commit_veto raised; rolling back",
                extra=facts("request", "rolled_back", "exception", status),
            )
            record(exc).logged = True
            unit.rollback()
            raise
        whole = True
        debug = logger.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0
        if commit:
            try:
                whole = unit.commit()
            except BaseException as exc:
                self._failure = exc
                if not isinstance(exc, (RejectedWorkError, CommitInDoubtError, NotCommittedError)):
                    # Those the unit logged itself, saying what became of the work.
                    logger.exception(
                        "commit failed; rolled back, the client gets an error instead of %r",
                        status,
                        extra=unit_facts(unit, "commit_failed", "exception", status),
                    )
                record(exc).logged = True
                raise
            self._committed = True
        else:
            unit.rollback()
        if debug:
            outcome = "committed" if commit and whole else "rolled_back"
            if not whole:
                reason = "removed"
            elif reason == "veto" and default_veto(self._middleware):
                reason = "status"
            logger.debug(
                "%s %s (%s): %s",
                outcome.replace("_", " "),
                self._environ.get("PATH_INFO"),
                reason,
                status,
                extra=facts("request", outcome, reason, status, time.perf_counter() - started),
            )
        exc_info, self._exc_info = self._exc_info, None
        self._server_write = self._server_start_response(status, self._headers, exc_info)

    def _truncated(self) -> bool:
        return self._input is not None and self._input.truncated

    def _refuse(self) -> None:
        """The body ended before its Content-Length: roll back, answer 400 instead."""
        watched = self._input
        assert watched is not None
        watched.refused = True
        if tracing is not None:
            tracing.refused(self.unit._trace, "truncated", REFUSED_STATUS)
        self.unit.rollback()
        warn_truncated(self._environ, watched.received, watched.announced, watched.failure)
        self._exc_info = None
        self._server_start_response(REFUSED_STATUS, list(REFUSED_HEADERS))
        self._server_write = _discard  # the application's own body does not go out

    def _abort(self) -> None:
        """The request failed before a response was handed over: undo, close, clean up."""
        if not self._decided:
            logger.debug(
                "rolled back %s (the application raised)",
                self._environ.get("PATH_INFO"),
                extra=facts("request", "rolled_back", "exception", self._status),
            )
        self._exc_info = None
        self._finished = False
        self.close()

    # -- the iterable returned to the server ------------------------------

    def __iter__(self) -> Iterator[bytes]:
        # A generator rather than __next__ (8.9k instructions against 10.4k for a
        # one-chunk body, 28.6k against 33.8k for ten; callgrind): resuming it costs
        # no new frame per chunk, and next(..., _END) ends it without StopIteration.
        first = self._first
        if first is not None:
            self._first = None
            yield first
        iterator = self._iterator
        assert iterator is not None
        if self._plain:
            yield from iterator
            self._finished = True
            return
        unit = self.unit
        while True:
            token = current.set(unit)
            try:
                chunk = next(iterator, _END)
            finally:
                current.reset(token)
            if chunk is _END:
                self._finished = True
                return
            yield chunk

    def close(self) -> None:
        """Close the application's iterable once, settle later work, remove the sessions."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._app_iter, "close", None)
        if close is None:
            self._settle()
            return
        token = current.set(self.unit)
        try:
            try:
                close()
            except BaseException:
                self._finished = False
                raise
            finally:
                self._settle()
        finally:
            current.reset(token)

    def _settle(self) -> None:
        """Commit work done while streaming if the response committed, else roll back."""
        unit = self.unit
        if unit.idle():
            if tracing is not None:
                tracing.end(unit)
            return
        try:
            watched = self._input
            if self._committed and watched is not None and watched.truncated:
                # The body was cut short while the response streamed: keep nothing more.
                warn_truncated(
                    self._environ,
                    watched.received,
                    watched.announced,
                    watched.failure,
                    "work done while the response streamed is rolled back",
                )
                unit.rollback()
            elif not unit.busy():
                pass  # nothing was done after the decision: nothing to settle, only to end
            elif unit.commits_late_work(self._committed and self._finished):
                try:
                    unit.commit()
                except Exception:
                    logger.exception(
                        "commit of work done while streaming the body failed; rolled back",
                        extra=unit_facts(unit, "commit_failed", "exception", self._status),
                    )
                    raise
            else:
                unit.rollback()
        finally:
            unit.end()


def _discard(data: bytes) -> None:
    """The ``write()`` an application gets once its response was replaced by a 400."""
