"""TCP proxies in front of a database: drop every connection, cut one after COMMIT, or listen.

:class:`TcpProxy` forwards 127.0.0.1:``port`` to a database server, so a test
can make the database unreachable and bring it back without touching the
server itself. Subclasses read the client's bytes as they pass, split into
protocol messages by :class:`SqlStream` (PostgreSQL's Query and Parse
messages and MySQL's COM_QUERY packets carry the SQL as plain text; give
PostgreSQL clients ``sslmode=disable``):

* :class:`CommitCuttingProxy` lets the server commit, then hangs up before
  the client hears it: a COMMIT in doubt;
* :class:`Sniffer` records every statement clients send, including those no
  SQLAlchemy event sees (psycopg's implicit ``BEGIN``, a dialect's ``SET``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import ClassVar, NamedTuple

__all__ = ["CommitCuttingProxy", "Message", "Sniffer", "SqlStream", "TcpProxy"]

_PROTOCOLS = {"postgresql": "postgresql", "mariadb": "mysql", "mysql": "mysql"}
_PROTOCOL_3 = 196608  # PostgreSQL's StartupMessage code: typed messages follow it


class Message(NamedTuple):
    """One client message: the SQL it carries, and where it starts and ends in its chunk.

    ``start`` is negative for a message begun in an earlier chunk.
    """

    sql: str
    start: int
    end: int
    #: Whether the message runs its SQL now (a simple Query, a COM_QUERY), not only parses it.
    runs: bool


class SqlStream:
    """One client's byte stream, split into messages as it is fed.

    ``protocol`` is ``"postgresql"``, or ``"mariadb"`` / ``"mysql"``. :meth:`feed`
    returns a :class:`Message` for each whole message the bytes complete (its SQL
    is ``""`` for a message that carries none).
    """

    def __init__(self, protocol: str) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"no message parser for {protocol!r}")
        self.protocol = _PROTOCOLS[protocol]
        self._buffer = bytearray()
        self._start = 0  # the stream offset of _buffer[0]
        self._started = self.protocol == "mysql"  # PostgreSQL: untyped messages first

    def feed(self, data: bytes) -> list[Message]:
        chunk_start = self._start + len(self._buffer)
        self._buffer += data
        found = []
        while (message := self._next()) is not None:
            sql, size, runs = message
            start = self._start - chunk_start
            self._start += size
            del self._buffer[:size]
            found.append(Message(sql, start, start + size, runs))
        return found

    def _next(self) -> tuple[str, int, bool] | None:
        """The next whole message's SQL, size and whether it runs, or ``None`` for now."""
        buffer = self._buffer
        if self.protocol == "mysql":
            # A packet: 3-byte little-endian length, sequence byte, payload.
            if len(buffer) < 4:
                return None
            size = 4 + int.from_bytes(buffer[:3], "little")
            if len(buffer) < size:
                return None
            payload = bytes(buffer[4:size])
            if payload[:1] == b"\x03":  # COM_QUERY: the SQL
                return payload[1:].decode(errors="replace"), size, True
            return "", size, False
        if not self._started:
            # SSLRequest, GSSENCRequest, StartupMessage: int32 length, int32 code.
            if len(buffer) < 8:
                return None
            size, code = struct.unpack_from("!ii", buffer)
            if len(buffer) < size:
                return None
            self._started = code == _PROTOCOL_3
            return "", size, False
        # Typed: one byte, int32 length (counting itself), the body.
        if len(buffer) < 5:
            return None
        size = 1 + int.from_bytes(buffer[1:5], "big")
        if len(buffer) < size:
            return None
        kind, body = bytes(buffer[:1]), bytes(buffer[5:size])
        if kind == b"Q":  # simple query: the SQL
            return body.rstrip(b"\0").decode(errors="replace"), size, True
        if kind == b"P":  # Parse: statement name, then the SQL
            return body.split(b"\0")[1].decode(errors="replace"), size, False
        return "", size, False


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a database; :meth:`stop` makes it unreachable.

    Stopping closes the listening socket (new connections are refused) and
    every forwarded connection (pooled connections break); :meth:`start`
    listens again on the same port.
    """

    #: How long a cut connection waits for the server's reply to the watched message.
    REPLY_WAIT: ClassVar[float] = 2.0

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)
        self._threads = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        watch = self._watch()
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 1.0)
                if client.fileno() < 0 or upstream.fileno() < 0:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    cut = watch(data) if watch is not None and sock is client else None
                    if cut is None:
                        pair[sock].sendall(data)
                        continue
                    # Forward up to the cut; if it forwarded the watched message, let the
                    # server answer it (or give it a moment); then hang up on both sides.
                    offset, answered = cut
                    upstream.sendall(data[:offset])
                    if answered and select.select([upstream], [], [], self.REPLY_WAIT)[0]:
                        upstream.recv(65536)  # the reply, never forwarded
                    self._after_cut()
                    return
        except (OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets.difference_update((client, upstream))

    def _after_cut(self) -> None:
        """Called once a connection was cut; the plain proxy does nothing more."""

    def refuse(self) -> None:
        """Stop accepting connections (those open go on), until :meth:`start`."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _watch(self) -> Callable[[bytes], tuple[int, bool] | None] | None:
        """Per connection: a function that reads the client's bytes as they pass.

        It returns ``None`` to forward a chunk, or ``(offset, answered)``: the
        offset in the chunk after which nothing more is forwarded on this
        connection, and whether the server must be given time to answer the
        watched message (it was forwarded). The plain proxy watches nothing.
        """
        return None


class CommitCuttingProxy(TcpProxy):
    """A :class:`TcpProxy` that, once :meth:`arm`-ed, makes the next COMMIT in doubt.

    The client's COMMIT reaches the server; the proxy waits for the server's
    reply (or :attr:`REPLY_WAIT` seconds), drops it, and closes both sockets.
    The transaction is committed, yet the client sees a lost connection.
    Armed with ``forward=False``, the proxy hangs up *before* forwarding the
    COMMIT: the client sees the same lost connection, and the server, which
    never got the COMMIT, rolls the transaction back.
    ``dialect`` is ``"postgresql"`` (psycopg's simple Query message; the URL
    must say ``sslmode=disable`` so the stream can be read) or ``"mariadb"``
    / ``"mysql"`` (a COM_QUERY packet). :attr:`cuts` counts the COMMITs cut.
    """

    def __init__(self, target_host: str, target_port: int, dialect: str) -> None:
        super().__init__(target_host, target_port)
        if dialect not in _PROTOCOLS:
            raise ValueError(f"no COMMIT parser for {dialect!r}")
        self.dialect = dialect
        self.cuts = 0
        self._armed = 0
        self._forward = True
        self._passing = 0
        self._then_refuse = False

    def arm(
        self, times: int = 1, *, forward: bool = True, after: int = 0, then_refuse: bool = False
    ) -> None:
        """Cut the connection at the next ``times`` COMMITs (on any connection).

        After forwarding each (the server commits), or before (``forward=False``:
        the server never gets it). The first ``after`` COMMITs pass untouched
        (a keyed request commits its claim first). With ``then_refuse``, the
        proxy accepts no new connection once it cut one (:meth:`refuse`): the
        database is unreachable for whoever asks what became of the COMMIT.
        """
        with self._lock:
            self._armed = times
            self._forward = forward
            self._passing = after
            self._then_refuse = then_refuse

    def _after_cut(self) -> None:
        if self._then_refuse:
            self.refuse()

    @property
    def armed(self) -> int:
        """COMMITs still to be cut."""
        with self._lock:
            return self._armed

    def _take(self) -> bool | None:
        """``None`` when not armed; else whether the COMMIT is forwarded before the cut."""
        with self._lock:
            if self._armed <= 0:
                return None
            if self._passing > 0:
                self._passing -= 1
                return None
            self._armed -= 1
            self.cuts += 1
            return self._forward

    def _watch(self) -> Callable[[bytes], tuple[int, bool] | None]:
        stream = SqlStream(self.dialect)

        def watch(data: bytes) -> tuple[int, bool] | None:
            for message in stream.feed(data):
                if not (message.runs and message.sql.strip().upper() == "COMMIT"):
                    continue
                forward = self._take()
                if forward is not None:
                    # A COMMIT begun in an earlier chunk is incomplete without this one.
                    return max(message.end if forward else message.start, 0), forward
            return None

        return watch


class Sniffer(TcpProxy):
    """A :class:`TcpProxy`, started at once, that records the SQL clients send.

    ``protocol`` is ``"postgresql"`` or ``"mariadb"`` / ``"mysql"``.
    """

    def __init__(self, target_host: str, target_port: int, protocol: str) -> None:
        super().__init__(target_host, target_port)
        SqlStream(protocol)  # refuses an unknown protocol here, not in a relay thread
        self.protocol = protocol
        self._statements: list[str] = []
        self.start()

    def statements(self) -> list[str]:
        """The SQL statements clients sent so far, in the order they were sent."""
        with self._lock:
            return list(self._statements)

    def clear(self) -> None:
        with self._lock:
            self._statements.clear()

    def close(self) -> None:
        self.stop()

    def _watch(self) -> Callable[[bytes], tuple[int, bool] | None]:
        stream = SqlStream(self.protocol)

        def watch(data: bytes) -> None:
            found = [message.sql for message in stream.feed(data) if message.sql]
            with self._lock:
                self._statements += found

        return watch
