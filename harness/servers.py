"""Real WSGI servers on 127.0.0.1, for tests and bench: gunicorn here, the others in launchers.

Every server is one real process started with the same conventions: an
ephemeral port (bound by the server itself and read from its log, or picked
just before for Apache, which cannot bind port 0), a log file read to know
when it listens and its workers are up, a :class:`ServerError` carrying the
log when it fails, a parent-death signal so that a killed run leaves nothing
behind, and a stop by pid (SIGTERM to the master, then SIGKILL to its
process group). Nothing else is ever stopped.

:class:`Gunicorn` is the gunicorn master and its workers: a worker that died,
timed out or was killed, or a request that left its session behind (the
middleware's ``StaleSessionWarning``), is trouble. :data:`READY_CONF` is the
gunicorn configuration whose workers say when they can serve
(:meth:`Gunicorn.wait_for_workers`). :func:`gunicorn` serves an app for a
benchmark and yields its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from .net import until

__all__ = [
    "READY_CONF",
    "ROOT",
    "TROUBLE",
    "Gunicorn",
    "Reply",
    "ServerError",
    "die_with_parent",
    "gunicorn",
]

#: The repository root: servers run from there, so ``bench.apps:...`` and ``examples`` import.
ROOT = Path(__file__).resolve().parent.parent
READY_CONF = Path(__file__).resolve().with_name("ready_conf.py")
GUNICORN = Path(sys.executable).with_name("gunicorn")


class ServerError(AssertionError):
    """A server failed to start, died, or showed trouble in its log (the message has the log)."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# What must never appear in a server's log while a test runs: a worker that died for a
# reason other than our SIGTERM, or a session that a request left behind.
TROUBLE = re.compile(
    r"WORKER TIMEOUT|was sent SIG(?!TERM)|exited with code|Worker failed to boot"
    r"|App failed to load|Shutting down|StaleSessionWarning"
)
READY = re.compile(r"wsgi_sqla tests: worker (\d+) is ready")


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
    #: Where the application's modules are, besides the repository root.
    paths: list[Path] = field(default_factory=list)

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
            ",".join(map(str, [ROOT, *self.paths])),
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
                preexec_fn=die_with_parent,
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

    def fail(self, message: str) -> NoReturn:
        raise ServerError(f"{message}\n{self.log_heading()}\n{self.tail()}")

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


@contextlib.contextmanager
def gunicorn(
    app: str,
    log: Path,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    ready: str = "/nodb",
) -> Iterator[int]:
    """Serve ``app`` (a gunicorn app spec) on 127.0.0.1 for a benchmark; yields its port.

    The port is yielded once the app answers ``GET ready`` with 200. ``args``
    are gunicorn options (workers, worker class); its log goes to ``log``.
    Stopped on exit, whatever happened.
    """
    server = Gunicorn(app, list(args), dict(env or {}), log)
    try:
        server.start(timeout)

        def answers() -> bool:
            with contextlib.suppress(OSError, http.client.HTTPException):
                return server.request("GET", ready, timeout=2).status == 200
            server.check()
            return False

        if not until(answers, timeout):
            server.fail(f"{app} did not answer GET {ready} with 200 within {timeout} s")
        yield server.port
    finally:
        server.stop()
