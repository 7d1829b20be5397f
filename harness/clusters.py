"""Throwaway primary + streaming replicas, started from the database's own tools.

:func:`postgresql_cluster` runs ``initdb``, ``pg_ctl`` and ``pg_basebackup -R``
(PostgreSQL 15, found through ``pg_config --bindir``) as the ``postgres``
user; :func:`mariadb_cluster` runs ``mariadb-install-db`` and ``mariadbd``
(binary log and GTID on the primary, ``CHANGE MASTER TO ...
MASTER_USE_GTID=slave_pos`` on each replica). Every server listens on a free
127.0.0.1 port, keeps its data and socket in a temporary folder, and is
stopped by its pid when the block ends. The shared servers on 5432/3306 are
never touched.

A replica's apply delay is settable at run time (:meth:`Server.set_delay`),
so a test can make replication lag deterministic; :meth:`Server.stop` and
:meth:`Server.start` take one replica down and bring it back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import text

from .net import Unavailable, free_port, wait_until

DATABASE = "app"


@dataclass
class Server:
    """One database server process of a cluster."""

    kind: str  # "postgresql" or "mariadb"
    role: str  # "primary" or "replica"
    port: int
    datadir: Path
    start_command: list[str]
    log: Path
    primary_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    delay: float = 0.0
    engines: list[sqlalchemy.Engine] = field(default_factory=list)

    @property
    def url(self) -> str:
        if self.kind == "postgresql":
            return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"
        return f"mariadb+pymysql://root@127.0.0.1:{self.port}/{DATABASE}"

    def engine(self, **kw: Any) -> sqlalchemy.Engine:
        """A new engine on this server, disposed of when the cluster stops."""
        engine = sqlalchemy.create_engine(self.url, **kw)
        self.engines.append(engine)
        return engine

    def admin(self, sql: str) -> None:
        """Run ``sql`` on this server through a short-lived autocommit connection."""
        url = self.url.rsplit("/", 1)[0] + ("/postgres" if self.kind == "postgresql" else "/")
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=_null())
        try:
            with engine.connect() as connection:
                connection.execute(text(sql))
        finally:
            engine.dispose()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.kind == "postgresql":
            _run(self.start_command)
            self.pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        else:
            logfile = self.log.open("ab")
            self.process = subprocess.Popen(
                self.start_command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            logfile.close()
            self.pid = self.process.pid
        wait_until(
            self.accepts, f"{self.kind} {self.role} on port {self.port} accepting connections"
        )

    def accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} {self.role} exited; log:\n{self.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if self.kind == "postgresql":
            return _pg_ready(self.port)
        return True

    def stop(self) -> None:
        """Stop the server by its pid and wait until it is gone."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM is MariaDB's normal one.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT if self.kind == "postgresql" else signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        else:
            wait_until(lambda: not _alive(pid), f"postgresql pid {pid} exiting")

    def set_delay(self, seconds: float) -> None:
        """Make this replica apply each transaction ``seconds`` after the primary committed it."""
        if self.role != "replica":
            raise ValueError("set_delay: only a replica has an apply delay")
        if self.kind == "postgresql":
            self.admin(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(seconds * 1000)}ms'")
            self.admin("SELECT pg_reload_conf()")
        else:
            # MASTER_DELAY takes whole seconds.
            self.admin("STOP SLAVE")
            self.admin(f"CHANGE MASTER TO MASTER_DELAY = {round(seconds)}")
            self.admin("START SLAVE")
        self.delay = seconds


@dataclass
class Cluster:
    """A primary and its replicas; :attr:`kind` is ``postgresql`` or ``mariadb``."""

    kind: str
    primary: Server
    replicas: list[Server]
    root: Path

    def wait_caught_up(self, timeout: float = 60) -> None:
        """Wait until every running replica has applied everything the primary committed."""
        primary = self.primary.engine(poolclass=_null())
        with primary.connect() as connection:
            if self.kind == "postgresql":
                target = connection.execute(text("SELECT pg_current_wal_flush_lsn()")).scalar_one()
            else:
                target = connection.execute(text("SELECT @@gtid_binlog_pos")).scalar_one()
        for replica in self.replicas:
            if replica.pid is None:
                continue
            engine = replica.engine(poolclass=_null())
            with engine.connect() as connection:
                if self.kind == "postgresql":

                    def caught_up(c: sqlalchemy.Connection = connection) -> bool:
                        return bool(
                            c.execute(
                                text("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)"),
                                {"t": target},
                            ).scalar_one()
                        )

                else:

                    def caught_up(c: sqlalchemy.Connection = connection) -> bool:
                        waited = c.execute(
                            text("SELECT MASTER_GTID_WAIT(:t, 1)"), {"t": target}
                        ).scalar_one()
                        return bool(waited == 0)

                wait_until(caught_up, f"{self.kind} replica on {replica.port} catching up", timeout)


def _stop(server: Server) -> None:
    """Dispose of the engines made for ``server``, then stop it; never raises."""
    for engine in server.engines:
        engine.dispose()
    with contextlib.suppress(Exception):
        server.stop()


@contextlib.contextmanager
def _torn_down(root: Path) -> Iterator[list[Server]]:
    """A list to add each server to before starting it: all stopped, ``root`` removed, at exit."""
    servers: list[Server] = []
    try:
        yield servers
    finally:
        for server in reversed(servers):
            _stop(server)
        shutil.rmtree(root, ignore_errors=True)


def _null() -> type[sqlalchemy.pool.Pool]:
    return sqlalchemy.pool.NullPool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _run(command: list[str], **kw: object) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _pg_ready(port: int) -> bool:
    try:
        engine = sqlalchemy.create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", poolclass=_null()
        )
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except sqlalchemy.exc.OperationalError:
        return False
    return True


def _as_user(user: str) -> list[str]:
    return [] if os.geteuid() != 0 else ["runuser", "-u", user, "--"]


def _owned_tmpdir(user: str, prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(root, user, user)
    root.chmod(0o755)
    return root


# -- PostgreSQL ---------------------------------------------------------------


def _pg_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise Unavailable("pg_config not found: install PostgreSQL 15 (postgresql-15)")
    bindir = Path(
        subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
    )
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (bindir / tool).exists():
            raise Unavailable(
                f"{bindir / tool} not found: install PostgreSQL 15's server (postgresql-15)"
            )
    return bindir


@contextlib.contextmanager
def postgresql_cluster(replicas: int = 2) -> Iterator[Cluster]:
    """A PostgreSQL primary and ``replicas`` streaming replicas, stopped on exit."""
    bindir = _pg_bindir()
    root = _owned_tmpdir("postgres", "wsgi-sqla-pg-")
    user = _as_user("postgres")
    with _torn_down(root) as servers:
        primary_dir = root / "primary"
        _run([*user, str(bindir / "initdb"), "-D", str(primary_dir), "-A", "trust",
              "-U", "postgres", "--no-sync", "--no-instructions"])  # fmt: skip
        port = free_port()
        settings = {
            "port": port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{root}'",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "hot_standby": "on",
            "fsync": "off",
            "full_page_writes": "off",
            "max_prepared_transactions": 10,
            "max_connections": 60,
            "shared_buffers": "'16MB'",
            "wal_receiver_status_interval": "'1s'",
        }
        with (primary_dir / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))
        primary = _pg_server("primary", port, primary_dir, root, bindir, user)
        servers.append(primary)
        primary.start()
        primary.admin(f"CREATE DATABASE {DATABASE}")
        replica_servers = []
        for index in range(replicas):
            replica_dir = root / f"replica{index}"
            _run([*user, str(bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(port),
                  "-U", "postgres", "-D", str(replica_dir), "-R", "-X", "stream",
                  "--no-sync", "-c", "fast"])  # fmt: skip
            replica_port = free_port()
            with (replica_dir / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {replica_port}\n")
            replica = _pg_server("replica", replica_port, replica_dir, root, bindir, user)
            replica.primary_port = port
            servers.append(replica)
            replica.start()
            replica_servers.append(replica)
        yield Cluster("postgresql", primary, replica_servers, root)


def _pg_server(
    role: str, port: int, datadir: Path, root: Path, bindir: Path, user: list[str]
) -> Server:
    log = root / f"{datadir.name}.log"
    command = [
        *user,
        str(bindir / "pg_ctl"),
        "-D",
        str(datadir),
        "-l",
        str(log),
        "-w",
        "-t",
        "60",
        "start",
    ]
    return Server("postgresql", role, port, datadir, command, log)


# -- MariaDB -------------------------------------------------------------------


def _mariadb_binaries() -> tuple[str, str]:
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/libexec")
    install = shutil.which("mariadb-install-db")
    if mariadbd is None or install is None:
        raise Unavailable("mariadbd / mariadb-install-db not found: install mariadb-server")
    return mariadbd, install


@contextlib.contextmanager
def mariadb_cluster(replicas: int = 2) -> Iterator[Cluster]:
    """A MariaDB primary (binary log, GTID) and ``replicas`` GTID replicas, stopped on exit."""
    mariadbd, install = _mariadb_binaries()
    root = _owned_tmpdir("mysql", "wsgi-sqla-mariadb-")
    with _torn_down(root) as servers:
        primary = _mariadb_server("primary", 1, root, mariadbd, install)
        servers.append(primary)
        primary.start()
        # Users are local to each server; the database itself replicates.
        _bootstrap_root(primary)
        primary.admin(f"CREATE DATABASE {DATABASE}")
        replica_servers = []
        for index in range(replicas):
            replica = _mariadb_server("replica", 2 + index, root, mariadbd, install)
            replica.primary_port = primary.port
            servers.append(replica)
            replica.start()
            _bootstrap_root(replica)
            replica.admin(
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                "MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos"
            )
            replica.admin("START SLAVE")
            replica_servers.append(replica)
        cluster = Cluster("mariadb", primary, replica_servers, root)
        cluster.wait_caught_up()
        yield cluster


def _mariadb_server(role: str, server_id: int, root: Path, mariadbd: str, install: str) -> Server:
    datadir = root / f"{role}{server_id}"
    _run([install, "--no-defaults", f"--datadir={datadir}", "--user=mysql",
          "--auth-root-authentication-method=normal", "--skip-test-db",
          "--skip-name-resolve"])  # fmt: skip
    port = free_port()
    log = root / f"{datadir.name}.log"
    command = [
        mariadbd,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--socket={datadir}/mariadb.sock",
        f"--pid-file={datadir}/mariadb.pid",
        "--user=mysql",
        f"--server-id={server_id}",
        "--log-bin=binlog",
        "--binlog-format=ROW",
        "--log-slave-updates",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=16M",
        "--innodb-flush-log-at-trx-commit=2",
        "--sync-binlog=0",
        "--max-connections=60",
        "--skip-log-error",
        *(["--read-only"] if role == "replica" else []),
    ]
    return Server("mariadb", role, port, datadir, command, log)


def _bootstrap_root(server: Server) -> None:
    """Let root connect over TCP from 127.0.0.1 without a password (this server only)."""
    sock = server.datadir / "mariadb.sock"
    wait_until(sock.exists, f"{sock} appearing")
    sql = (
        "SET sql_log_bin = 0; "
        "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; "
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; "
        "FLUSH PRIVILEGES;"
    )
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        raise Unavailable("the mariadb client is not installed (mariadb-client)")
    _run([client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql])
