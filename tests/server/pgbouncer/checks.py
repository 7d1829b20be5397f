"""Checks shared by the PgBouncer tests: what a finished run must leave behind."""

from __future__ import annotations

from sqlalchemy import Engine, text

from harness.pgbouncer import PgBouncer

__all__ = ["assert_nothing_left_open", "server_backends"]


def server_backends(engine: Engine, bouncer: PgBouncer) -> dict[int, str]:
    """PostgreSQL's own view of PgBouncer's server connections: backend pid -> state."""
    pids = [int(row["remote_pid"]) for row in bouncer.servers()]
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(:pids)"),
            {"pids": pids},
        )
        return {int(pid): str(state) for pid, state in rows}


def assert_nothing_left_open(bouncer: PgBouncer, engine: Engine) -> None:
    """No client waits, no server connection is busy, none sits inside a transaction.

    Asked of PgBouncer (``SHOW POOLS`` / ``SHOW SERVERS`` on its admin console)
    and of PostgreSQL itself (``pg_stat_activity``, through ``engine``, a
    direct connection), for this database.
    """
    pool = bouncer.settle()
    busy = {k: pool[k] for k in ("cl_waiting", "sv_active", "sv_tested", "sv_login")}
    assert busy == dict.fromkeys(busy, "0"), pool
    servers = bouncer.servers()
    assert len(servers) <= bouncer.pool_size, servers
    assert {row["state"] for row in servers} <= {"idle", "used"}, servers
    backends = server_backends(engine, bouncer)
    assert set(backends.values()) <= {"idle"}, backends
    with engine.connect() as connection:
        in_transaction = connection.execute(
            text(
                "SELECT pid, state, left(query, 80) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state LIKE 'idle in transaction%'"
            )
        ).all()
    assert in_transaction == []
