"""What a driver really sends: a TCP relay that records the SQL text clients send.

:class:`Sniffer` listens on a free port of 127.0.0.1 and relays every
connection to a database server, keeping a copy of the bytes each client
sent. PostgreSQL's Query and Parse messages and MySQL's COM_QUERY packets
carry the SQL as plain text, so :meth:`Sniffer.statements` lists every
statement the driver sent, including those no SQLAlchemy event sees
(psycopg's implicit ``BEGIN``, the dialect's own ``SET SESSION ...``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

__all__ = ["Sniffer"]


class _Reader:
    """Splits one client's byte stream into messages and keeps the SQL they carry."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.buffer = bytearray()
        self.started = False  # PostgreSQL: the untyped startup message(s) are behind us

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        found: list[str] = []
        while True:
            message = self._next()
            if message is None:
                return found
            if message:
                found.append(message)

    def _next(self) -> str | None:
        buffer = self.buffer
        if self.protocol == "mysql":
            if len(buffer) < 4:
                return None
            size = int.from_bytes(buffer[:3], "little")
            if len(buffer) < 4 + size:
                return None
            payload = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            return payload[1:].decode(errors="replace") if payload[:1] == b"\x03" else ""
        if not self.started:  # SSLRequest / StartupMessage: length, then the code
            if len(buffer) < 8:
                return None
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < size:
                return None
            code = int.from_bytes(buffer[4:8], "big")
            del buffer[:size]
            self.started = code != 80877103  # an SSLRequest is followed by the startup
            return ""
        if len(buffer) < 5:
            return None
        size = int.from_bytes(buffer[1:5], "big")
        if len(buffer) < 1 + size:
            return None
        kind, payload = buffer[:1], bytes(buffer[5 : 1 + size])
        del buffer[: 1 + size]
        if kind == b"Q":  # simple query: the SQL
            return payload.rstrip(b"\0").decode(errors="replace")
        if kind == b"P":  # Parse: statement name, then the SQL
            return payload.split(b"\0")[1].decode(errors="replace")
        return ""


class Sniffer:
    """Relays 127.0.0.1:``port`` to ``target`` and records the SQL clients send.

    ``protocol`` is ``"postgresql"`` or ``"mysql"``. Give PostgreSQL clients
    ``sslmode=disable``: an encrypted stream cannot be read.
    """

    def __init__(self, target_host: str, target_port: int, protocol: str) -> None:
        self.target = (target_host, target_port)
        self.protocol = protocol
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._statements: list[str] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def statements(self) -> list[str]:
        """The SQL statements clients sent so far, in the order they were sent."""
        with self._lock:
            return list(self._statements)

    def clear(self) -> None:
        with self._lock:
            self._statements.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        other = {client: upstream, upstream: client}
        reader = _Reader(self.protocol)
        try:
            while True:
                readable, _, _ = select.select(list(other), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            self._statements += reader.feed(data)
                    other[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
