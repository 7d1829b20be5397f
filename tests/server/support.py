"""Real servers for the end-to-end tests: gunicorn subprocesses and a TCP proxy.

Imported explicitly (``from .support import ...``); the fixtures are in conftest.py.

:func:`servers` starts ``gunicorn`` on an ephemeral port of 127.0.0.1 (it
binds port 0 and the port is read from its log, so two test runs never race
for a port), waits until it listens, and stops it when the block (for the
``gunicorn`` fixture, the test) ends, passed or failed. A server that dies,
a worker that crashes, times out or is killed, or a request that leaves
its session behind (the middleware's ``StaleSessionWarning``) fails the
test with the server's log. The master is started with a parent-death
signal, so even a test run that is killed outright leaves no server behind.

:class:`TcpProxy` stands between an application and its database, so a test
can make the database unreachable and bring it back without touching the
database server itself (other developers use it); :class:`CommitCuttingProxy`
lets the server commit and then hangs up before the client hears it, so a
test can put a COMMIT in doubt.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GUNICORN = Path(sys.executable).with_name("gunicorn")

# What must never appear in a server's log while a test runs: a worker that died for a
# reason other than our SIGTERM, or a session that a request left behind.
TROUBLE = re.compile(
    r"WORKER TIMEOUT|was sent SIG(?!TERM)|exited with code|Worker failed to boot"
    r"|App failed to load|Shutting down|StaleSessionWarning"
)
READY = re.compile(r"wsgi_sqla tests: worker (\d+) is ready")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Gunicorn:
    """One gunicorn master and its workers, serving ``app`` on 127.0.0.1."""

    app: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    stopping: bool = False
    problems: list[str] = field(default_factory=list)

    #: How the server is named in failures.
    name: ClassVar[str] = "gunicorn"
    #: What must never appear in the log while a test runs.
    trouble: ClassVar[re.Pattern[str]] = TROUBLE
    #: The log line that gives the port the server listens on.
    listening: ClassVar[re.Pattern[str]] = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
    #: Directories removed once the server stopped.
    cleanup: list[Path] = field(default_factory=list)

    def command(self) -> list[str]:
        return [
            str(GUNICORN),
            "--bind",
            "127.0.0.1:0",
            "--error-logfile",
            str(self.log),
            "--log-level",
            "info",
            "--capture-output",
            "--no-control-socket",
            "--graceful-timeout",
            "5",
            "--chdir",
            str(ROOT),
            "--pythonpath",
            f"{ROOT},{HERE}",
            *self.args,
            self.app,
        ]

    def start(self, timeout: float = 30) -> None:
        """Start gunicorn (which writes its own log) and wait until it listens."""
        self.spawn(ROOT, output_to_log=False, timeout=timeout)

    def spawn(self, cwd: Path, *, output_to_log: bool, timeout: float) -> None:
        """Run :meth:`command` in its own session, then wait for :attr:`listening` in the log."""
        self.log.write_text("")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log if output_to_log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.listening.search(self.log_text())
            if found and int(found.group(1)):
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None:
                self.fail(f"{self.name} exited with {self.process.returncode} before listening")
            time.sleep(0.05)
        self.fail(f"{self.name} did not listen within {timeout} s")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_workers(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` live workers have loaded the application and can serve."""
        deadline = time.monotonic() + timeout
        while len(self.ready_workers()) < count:
            if time.monotonic() > deadline:
                self.fail(f"gunicorn did not get {count} workers ready within {timeout} s")
            self.check()
            time.sleep(0.05)

    def ready_workers(self) -> set[int]:
        """Live workers that said they are ready (see ready_conf.py)."""
        said = {int(pid) for pid in READY.findall(self.log_text())}
        return said & set(self.workers())

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.log_heading()}\n{self.tail()}", pytrace=False)

    def log_heading(self) -> str:
        return f"--- {self.name} log ({self.app}) ---"

    def tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check(self) -> None:
        """Fail if the master is gone, a worker died or a session was left behind."""
        assert self.process is not None
        if self.process.poll() is not None:
            self.fail(f"{self.name} died (exit code {self.process.returncode})")
        trouble = self.trouble.search(self.log_text())
        if trouble:
            self.fail(f"trouble in the server: {trouble.group(0)!r}")

    def stop(self) -> list[str]:
        """Stop the master and its workers; returns what went wrong while it ran."""
        if self.process is None or self.stopping:
            return []
        self.stopping = True
        problems: list[str] = []
        if self.process.poll() is not None:
            problems.append(
                f"{self.name} died during the test (exit code {self.process.returncode})"
            )
        else:
            trouble = self.trouble.search(self.log_text())
            if trouble:
                problems.append(f"trouble in the server during the test: {trouble.group(0)!r}")
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            problems.append(f"{self.name} did not stop within 15 s of SIGTERM; killed")
        # Whatever happened, nothing of this server may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        report = [f"{p}\n{self.log_heading()}\n{self.tail()}" for p in problems]
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        return report

    def workers(self) -> list[int]:
        """Pids of the master's live worker processes."""
        assert self.process is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid and fields[0] != "Z":
                    children.append(int(stat.parent.name))
        return sorted(children)

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Reply:
        """One request on a new connection; fails with the server's log if it cannot connect."""
        connection = self.connection(timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        except (ConnectionError, http.client.RemoteDisconnected):
            self.check()
            raise
        finally:
            connection.close()

    def post_json(self, path: str, payload: object) -> Reply:
        return self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )


def fan_out(server: Gunicorn, path: str, count: int, threads: int) -> list[Any]:
    """GET ``path`` ``count`` times from ``threads`` threads at once; the JSON answers (all 200)."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        replies = list(pool.map(lambda _: server.request("GET", path), range(count)))
    assert [r.status for r in replies] == [200] * count, [r.body for r in replies]
    return [r.json() for r in replies]


def until(check: Callable[[], bool], timeout: float = 20) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


Serve = Callable[..., Gunicorn]


@contextlib.contextmanager
def servers(log_dir: Path) -> Iterator[Serve]:
    """Yields ``serve(app, database=url, ...)``; every server started is stopped on exit."""
    started: list[Gunicorn] = []

    def serve(
        app: str,
        *,
        database: str,
        worker_class: str = "sync",
        workers: int = 1,
        threads: int = 1,
        preload: bool = False,
        config: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Gunicorn:
        args = ["--worker-class", worker_class, "--workers", str(workers), "--timeout", "60"]
        if worker_class == "gthread":
            args += ["--threads", str(threads)]
        if preload:
            args.append("--preload")
        # A file next to this one; each of them says when a worker is ready.
        args += ["--config", str(HERE / (config or "ready_conf.py"))]
        server = Gunicorn(
            app,
            args,
            {"DATABASE_URL": database, **(env or {})},
            log_dir / f"gunicorn-{len(started)}.log",
        )
        started.append(server)
        server.start()
        server.wait_for_workers(workers)
        return server

    try:
        yield serve
    finally:
        problems = [p for server in started for p in server.stop()]
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def open_transactions(engine: Engine, application_name: str) -> list[tuple[object, ...]]:
    """Connections of the application that sit inside a transaction, described."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no server to ask about other connections' transactions")
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            query = (
                "SELECT pid, state, xact_start, state_change, left(query, 80) "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = :app AND state LIKE 'idle in transaction%%' "
                "AND pid <> pg_backend_pid()"
            )
            rows = connection.execute(text(query), {"app": application_name})
        else:
            query = (
                "SELECT p.id, p.command, t.trx_started, p.info "
                "FROM information_schema.innodb_trx t "
                "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
            )
            rows = connection.execute(text(query))
        return [tuple(row) for row in rows]


def load_module(path: Path, database: str) -> ModuleType:
    """Import the application at ``path`` afresh, as a worker would, with ``DATABASE_URL``."""
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = database
    try:
        spec = importlib.util.spec_from_file_location(f"loaded_{path.stem}_{id(path)}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # annotations resolve through it
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
        return module
    finally:
        if previous is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = previous


@contextlib.contextmanager
def app_tables(path: Path, database: str) -> Iterator[ModuleType]:
    """The tables of the application at ``path``, fresh, for the duration of the block.

    Created here rather than by the workers: workers importing an application
    at the same moment would race to create them.
    """
    module = load_module(path, database)
    metadata = module.Base.metadata
    metadata.drop_all(module.engine)
    metadata.create_all(module.engine)
    try:
        yield module
    finally:
        metadata.drop_all(module.engine)
        module.engine.dispose()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a database; :meth:`stop` makes it unreachable.

    Stopping closes the listening socket (new connections are refused) and
    every forwarded connection (pooled connections break); :meth:`start`
    listens again on the same port.
    """

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

    #: How long a cut connection waits for the server's reply to the watched message.
    REPLY_WAIT: ClassVar[float] = 2.0

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
        if dialect not in ("postgresql", "mariadb", "mysql"):
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
        buffer = bytearray()  # client bytes not yet read as whole messages
        started = self.dialect != "postgresql"  # PostgreSQL: untyped messages first

        def watch(data: bytes) -> tuple[int, bool] | None:
            nonlocal started
            base = len(buffer)  # where ``data`` starts in ``buffer``
            buffer.extend(data)
            consumed = 0
            while True:
                if self.dialect == "postgresql" and not started:
                    # SSLRequest, GSSENCRequest, StartupMessage: int32 length, int32 code.
                    if len(buffer) - consumed < 8:
                        break
                    length, code = struct.unpack_from("!ii", buffer, consumed)
                    if len(buffer) - consumed < length:
                        break
                    started = code == 196608  # protocol 3.0: typed messages follow
                    consumed += length
                    continue
                if self.dialect == "postgresql":
                    # Typed: one byte, int32 length (counting itself), the body.
                    if len(buffer) - consumed < 5:
                        break
                    (length,) = struct.unpack_from("!i", buffer, consumed + 1)
                    end = consumed + 1 + length
                    if len(buffer) < end:
                        break
                    is_commit = (
                        buffer[consumed : consumed + 1] == b"Q"
                        and bytes(buffer[consumed + 5 : end]).rstrip(b"\0").strip().upper()
                        == b"COMMIT"
                    )
                else:
                    # A packet: 3-byte little-endian length, sequence byte, payload.
                    if len(buffer) - consumed < 4:
                        break
                    length = int.from_bytes(buffer[consumed : consumed + 3], "little")
                    end = consumed + 4 + length
                    if len(buffer) < end:
                        break
                    payload = bytes(buffer[consumed + 4 : end])
                    is_commit = payload[:1] == b"\x03" and payload[1:].strip().upper() == b"COMMIT"
                start, consumed = consumed, end
                forward = self._take() if is_commit else None
                if forward is not None:
                    # A COMMIT begun in an earlier chunk is incomplete without this one.
                    return max((end if forward else start) - base, 0), forward
            del buffer[:consumed]
            return None

        return watch
