"""A real PgBouncer for the tests: Debian's ``pgbouncer`` in transaction pooling mode.

:class:`PgBouncer` writes a configuration into a temporary directory, starts
``/usr/sbin/pgbouncer`` in the foreground on a free port of 127.0.0.1
(PgBouncer refuses to run as root, so it is told to switch to the
``postgres`` user with ``-u``), in front of the PostgreSQL server and
database of a URL, and stops that process by its pid. It never looks at,
let alone stops, a PgBouncer it did not start.

The admin console (``admin_users``) answers ``SHOW POOLS``, ``SHOW SERVERS``
and ``SHOW CLIENTS``; :meth:`PgBouncer.show` returns their rows as dicts.
The console speaks only the simple query protocol, so it is queried with
psycopg's low-level ``pgconn.exec_()``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from .net import free_port

__all__ = ["PGBOUNCER", "PgBouncer", "PgBouncerMissing", "find_pgbouncer"]

PGBOUNCER = "pgbouncer"
RUN_AS = "postgres"


class PgBouncerMissing(RuntimeError):
    """The pgbouncer binary (or the user it must run as) is not on this machine."""


def find_pgbouncer() -> str:
    """The path of the pgbouncer binary; raises :class:`PgBouncerMissing` without it."""
    found = shutil.which(PGBOUNCER) or shutil.which(PGBOUNCER, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise PgBouncerMissing(
            "install Debian's pgbouncer (apt-get install pgbouncer) to run the PgBouncer tests"
        )
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PgBouncerMissing(
            f"pgbouncer must run as the {RUN_AS!r} user, which does not exist here"
        ) from None
    return found


class PgBouncer:
    """One PgBouncer process of our own, pooling connections to ``upstream``'s database.

    ``pool_size`` is ``default_pool_size``: how many PostgreSQL connections
    (server connections) PgBouncer opens at most for the database. Clients
    beyond that wait in PgBouncer until a server connection is free.
    """

    def __init__(
        self,
        upstream: str,
        *,
        pool_size: int = 4,
        pool_mode: str = "transaction",
        max_client_conn: int = 1000,
    ) -> None:
        self.upstream: URL = make_url(upstream)
        if not self.upstream.get_backend_name() == "postgresql":
            raise ValueError(f"PgBouncer: needs a PostgreSQL URL, got {upstream!r}")
        self.database = self.upstream.database or "postgres"
        self.user = self.upstream.username or "postgres"
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.max_client_conn = max_client_conn
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.directory = Path()

    @property
    def log(self) -> Path:
        return self.directory / "pgbouncer.log"

    def url(self, **query: str) -> str:
        """The upstream URL with PgBouncer's host and port instead, plus ``query``."""
        url = self.upstream.set(host="127.0.0.1", port=self.port)
        if query:
            url = url.update_query_dict(query)
        return url.render_as_string(hide_password=False)

    def _config(self) -> str:
        host = self.upstream.host or "127.0.0.1"
        upstream_port = self.upstream.port or 5432
        return "\n".join(
            [
                "[databases]",
                f"{self.database} = host={host} port={upstream_port} dbname={self.database} "
                f"user={self.user}",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                # The shared server trusts 127.0.0.1, so no password travels anywhere.
                "auth_type = trust",
                f"auth_file = {self.directory / 'users.txt'}",
                f"admin_users = {self.user}",
                f"stats_users = {self.user}",
                f"pool_mode = {self.pool_mode}",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                f"max_client_conn = {self.max_client_conn}",
                f"max_db_connections = {self.pool_size}",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {self.log}",
                f"pidfile = {self.directory / 'pgbouncer.pid'}",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )

    def start(self, timeout: float = 20) -> None:
        """Start PgBouncer and wait until its admin console answers."""
        binary = find_pgbouncer()
        self._dir = tempfile.TemporaryDirectory(prefix="wsgi_sqla_pgbouncer_")
        self.directory = Path(self._dir.name)
        account = pwd.getpwnam(RUN_AS)
        for attempt in range(5):
            self.port = free_port()
            (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
            (self.directory / "pgbouncer.ini").write_text(self._config())
            self.log.write_text("")
            os.chmod(self.directory, 0o755)
            for path in self.directory.iterdir():
                os.chown(path, account.pw_uid, account.pw_gid)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            command = [binary, *(["-u", RUN_AS] if os.geteuid() == 0 else [])]
            self.process = subprocess.Popen(
                [*command, str(self.directory / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self._wait_until_serving(timeout):
                return
            self.stop()
            if "Address already in use" not in self.tail() or attempt == 4:
                break
        raise RuntimeError(f"PgBouncer did not start:\n{self.tail()}")

    def _wait_until_serving(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                self.show("VERSION")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop our PgBouncer (by its pid) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # SIGINT: shut down at once, dropping clients
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None and self.process is None:
            self._last_log = self.tail()
            self._dir.cleanup()
            self._dir = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return getattr(self, "_last_log", "(no log)")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def show(self, what: str) -> list[dict[str, Any]]:
        """Rows of the admin console's ``SHOW <what>``, as dicts of text."""
        conninfo = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.user}"
        with contextlib.closing(psycopg.connect(conninfo, autocommit=True, connect_timeout=5)) as c:
            result = c.pgconn.exec_(f"SHOW {what}".encode())
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                message = (result.error_message or b"").decode(errors="replace")
                raise RuntimeError(f"PgBouncer: SHOW {what} failed: {message}")
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            rows = []
            for row in range(result.ntuples):
                values = [result.get_value(row, i) for i in range(result.nfields)]
                rows.append(
                    {
                        name: None if value is None else value.decode()
                        for name, value in zip(names, values, strict=True)
                    }
                )
            return rows

    def pool(self) -> dict[str, Any]:
        """The ``SHOW POOLS`` row of our database."""
        rows = [row for row in self.show("POOLS") if row["database"] == self.database]
        assert len(rows) == 1, rows
        return rows[0]

    def servers(self) -> list[dict[str, Any]]:
        """``SHOW SERVERS`` rows of our database: PgBouncer's PostgreSQL connections."""
        return [row for row in self.show("SERVERS") if row["database"] == self.database]

    def settle(self, timeout: float = 15) -> dict[str, Any]:
        """Wait until no client is active or waiting and no server is busy; the pool row.

        Returns the last row seen even if it never settled, so the caller's
        assertion shows what was still busy.
        """
        deadline = time.monotonic() + timeout
        while True:
            row = self.pool()
            busy = sum(int(row[k]) for k in ("cl_waiting", "sv_active", "sv_tested", "sv_login"))
            if busy == 0 or time.monotonic() > deadline:
                return row
            time.sleep(0.05)


#: What the ``make_pgbouncer`` fixture gives a test: ``make_pgbouncer(**settings)``.
MakeBouncer = Callable[..., PgBouncer]
