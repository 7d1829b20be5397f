"""Request bodies that end before their ``Content-Length``.

A client announces ``Content-Length: 11``, sends ``amount=10`` and hangs
up, or its connection breaks. The WSGI servers do not make that an error
the application can see: gunicorn and Werkzeug's server hand over the nine
bytes that came, ``read()`` simply returns fewer bytes than it was asked
for, and a form parser or JSON decoder then finds a well-formed body that
says something else than what the client meant to send (``amount=10``
where ``amount=100`` was on its way). The view saves it, answers 201, and
the unit of work would commit data the client never finished sending.

Only a party that knows how many bytes were announced and how many were
handed over can tell, so :class:`~wsgi_sqla.SessionMiddleware` wraps
``wsgi.input`` of every request with a positive ``Content-Length`` (and no
``Transfer-Encoding``, which would make the length meaningless) in a
:class:`CountedInput`. It counts the bytes the application gets through
``read()``, ``readline()``, ``readlines()`` and iteration, never reads past
the announced length, and marks the request *truncated* when the body is
shown to be short:

* a read returns fewer bytes than it asked for (the size requested, bounded
  by what is still announced), or a line ends without a newline before that
  bound: every WSGI server blocks until it has the bytes asked for or the
  client is gone, so a short read is the end of the body;
* a read raises: the server reporting a client that went away mid-body.
  The exception still reaches the application.

A body read in small pieces is not truncated, nor is one the application
never reads or stops reading halfway: nothing showed it to be short. A
truncated request is rolled back whatever its status, and answered
``400 Bad Request`` instead of the application's response while nothing of
that was sent (see :func:`refuse`). Requests without a body are not
wrapped, and pay for this with one environ lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "REFUSED_BODY",
    "REFUSED_HEADERS",
    "REFUSED_STATUS",
    "CountedInput",
    "refuse",
    "warn_truncated",
    "watch_input",
]

logger = logging.getLogger("wsgi_sqla")

REFUSED_STATUS = "400 Bad Request"
REFUSED_BODY = b"Bad Request: the request body ended before its Content-Length\n"
REFUSED_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(REFUSED_BODY))),
]


class CountedInput:
    """``wsgi.input`` of a request that announced ``announced`` bytes: counts what is read.

    Only the PEP 3333 input methods are offered; a framework that looks for
    more (Werkzeug's ``LimitedStream`` checks for ``readinto``) falls back
    to ``read()``, so every byte handed over is counted.
    """

    __slots__ = ("announced", "failure", "received", "refused", "stream", "truncated")

    def __init__(self, stream: Any, announced: int) -> None:
        #: the server's own ``wsgi.input``
        self.stream = stream
        self.announced = announced
        #: bytes handed to the application so far
        self.received = 0
        #: the body was shown to end before ``announced`` bytes (or a read raised)
        self.truncated = False
        #: what the failed read raised, as ``"Type: message"`` (not the exception:
        #: its traceback would hold the frames that hold this object)
        self.failure: str | None = None
        #: the middleware answered 400 for this request
        self.refused = False

    def _wanted(self, size: int | None) -> int:
        remaining = max(self.announced - self.received, 0)
        if size is None or size < 0 or size > remaining:
            return remaining
        return size

    def _failed(self, exc: Exception) -> None:
        self.truncated = True
        if self.failure is None:
            self.failure = f"{type(exc).__name__}: {exc}"

    def _take(self, read: Callable[[int], bytes], size: int | None) -> tuple[bytes, int]:
        """``read(n)`` of the server's stream, counted; with the ``n`` that was asked for."""
        wanted = self._wanted(size)
        if not wanted:
            return b"", 0
        try:
            data = read(wanted)
        except Exception as exc:
            self._failed(exc)
            raise
        self.received += len(data)
        return data, wanted

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is announced and left, by default)."""
        data, wanted = self._take(self.stream.read, size)
        if len(data) < wanted:
            self.truncated = True
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """One line, of at most ``size`` bytes; ``b""`` at the end of the body."""
        line, wanted = self._take(self.stream.readline, size)
        if len(line) < wanted and not line.endswith(b"\n"):
            self.truncated = True
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; stops after ``hint`` bytes when ``hint`` is positive."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def watch_input(environ: WSGIEnvironment, length: str) -> CountedInput | None:
    """Put a :class:`CountedInput` in ``environ`` for a request that announced ``length``.

    Returns it, or ``None`` (nothing changed) when ``length`` is not a
    positive number of bytes or the body is framed by ``Transfer-Encoding``.
    """
    try:
        announced = int(length)
    except ValueError:
        return None
    if announced <= 0 or environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    stream = environ["wsgi.input"]
    if isinstance(stream, CountedInput):
        return stream  # an outer SessionMiddleware counts already
    watched = CountedInput(stream, announced)
    environ["wsgi.input"] = watched
    return watched


def warn_truncated(
    environ: WSGIEnvironment,
    received: int,
    announced: int,
    failure: str | None,
    outcome: str = "rolled back, answered 400",
) -> None:
    """Log the one WARNING a truncated request gets."""
    logger.warning(
        "%s %s: the request body ended after %d of %d bytes (Content-Length)%s; %s",
        environ.get("REQUEST_METHOD"),
        environ.get("PATH_INFO"),
        received,
        announced,
        f" ({failure})" if failure else "",
        outcome,
    )


def refuse(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    received: int,
    announced: int,
    failure: str | None = None,
) -> list[bytes]:
    """Answer ``400 Bad Request`` for a truncated request whose server got no status yet."""
    warn_truncated(environ, received, announced, failure)
    start_response(REFUSED_STATUS, list(REFUSED_HEADERS))
    return [REFUSED_BODY]
