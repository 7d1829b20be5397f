"""Real servers for the end-to-end tests: gunicorn subprocesses and a TCP proxy.

Imported explicitly (``from .support import ...``); the fixtures are in conftest.py.
The servers and proxies themselves are harness/'s (:mod:`harness.servers`,
:mod:`harness.proxy`), named here as well; this module adds what only tests do.

:func:`servers` starts ``gunicorn`` on an ephemeral port of 127.0.0.1 (it
binds port 0 and the port is read from its log, so two test runs never race
for a port), waits until it listens, and stops it when the block (for the
``gunicorn`` fixture, the test) ends, passed or failed. A server that dies,
a worker that crashes, times out or is killed, or a request that leaves
its session behind (the middleware's ``StaleSessionWarning``) fails the
test with the server's log. The master is started with a parent-death
signal, so even a test run that is killed outright leaves no server behind.

:class:`TcpProxy` (make the database unreachable) and :class:`CommitCuttingProxy`
(put a COMMIT in doubt) are :mod:`harness.proxy`'s, imported from here as well.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, text

from harness.net import until
from harness.proxy import CommitCuttingProxy, TcpProxy
from harness.servers import READY_CONF, ROOT, TROUBLE, Gunicorn, Reply, die_with_parent

__all__ = [
    "HERE",
    "ROOT",
    "TROUBLE",
    "CommitCuttingProxy",
    "Gunicorn",
    "Reply",
    "Serve",
    "TcpProxy",
    "app_tables",
    "die_with_parent",
    "fan_out",
    "load_module",
    "open_transactions",
    "servers",
    "until",
]

#: This folder: the applications the tests serve, and their gunicorn configurations.
HERE = Path(__file__).resolve().parent


def fan_out(server: Gunicorn, path: str, count: int, threads: int) -> list[Any]:
    """GET ``path`` ``count`` times from ``threads`` threads at once; the JSON answers (all 200)."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        replies = list(pool.map(lambda _: server.request("GET", path), range(count)))
    assert [r.status for r in replies] == [200] * count, [r.body for r in replies]
    return [r.json() for r in replies]


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
        # harness/ready_conf.py, or a file next to this one: each says when a worker is ready.
        args += ["--config", str(HERE / config if config else READY_CONF)]
        server = Gunicorn(
            app,
            args,
            {"DATABASE_URL": database, **(env or {})},
            log_dir / f"gunicorn-{len(started)}.log",
            paths=[HERE],
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
