"""Helpers for the replica tests: state read through the test's own connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import webtest
from sqlalchemy import Connection, Engine, func, insert, select, text
from sqlalchemy.pool import NullPool

from harness.clusters import Cluster, Server
from harness.net import wait_until
from wsgi_sqla.testing import RoundTrips, count_round_trips

from .replica_app import App, Item, make_app

#: The Replicas secret of the signed apps.
SECRET = "a test secret of enough length"


def rows_everywhere(cluster: Cluster) -> dict[str, int]:
    """How many items the primary and each running replica hold, after catch-up."""
    cluster.wait_caught_up()
    counts = {}
    for name, server in [("primary", cluster.primary)] + [
        (f"replica{i}", r) for i, r in enumerate(cluster.replicas) if r.pid is not None
    ]:
        engine = server.engine()
        try:
            with engine.connect() as connection:
                counts[name] = connection.execute(
                    select(func.count()).select_from(Item)
                ).scalar_one()
        finally:
            engine.dispose()
    return counts


@contextmanager
def counting_all(
    primary: Engine, replicas: list[Engine]
) -> Iterator[tuple[RoundTrips, RoundTrips]]:
    """Round trips on the primary, and summed over the replicas, while the block runs."""
    with ExitStack() as stack:
        on_primary = stack.enter_context(count_round_trips(primary))
        per_replica = [stack.enter_context(count_round_trips(engine)) for engine in replicas]
        total = RoundTrips()
        yield on_primary, total
    for counts in per_replica:
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(counts, name))


@contextmanager
def writing_on(cluster: Cluster, every: float = 0.05) -> Iterator[None]:
    """A thread that commits a row on the primary every ``every`` seconds while the block runs.

    A delayed replica only falls behind while there is something to apply.
    """
    engine = cluster.primary.engine()
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            with engine.begin() as connection:
                connection.execute(insert(Item).values(name="traffic"))
            stop.wait(every)

    thread = threading.Thread(target=write, name="primary writer")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        engine.dispose()


@contextmanager
def replay_paused(cluster: Cluster) -> Iterator[None]:
    """PostgreSQL: every replica keeps receiving WAL but applies none of it while the block runs."""
    for replica in cluster.replicas:
        replica.admin("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        for replica in cluster.replicas:
            replica.admin("SELECT pg_wal_replay_resume()")


def commit_received(cluster: Cluster) -> None:
    """PostgreSQL: commit a row on the primary and wait until every replica has received it."""
    engine = cluster.primary.engine(poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(insert(Item).values(name="after a quiet spell"))
    with engine.connect() as connection:
        target = connection.execute(text("SELECT pg_current_wal_flush_lsn()")).scalar_one()
    received = text("SELECT pg_last_wal_receive_lsn() >= CAST(:t AS pg_lsn)")
    for replica in cluster.replicas:
        with replica.engine(poolclass=NullPool).connect() as connection:

            def has_it(connection: Connection = connection) -> bool:
                return bool(connection.execute(received, {"t": target}).scalar_one())

            wait_until(has_it, f"the replica on {replica.port} receiving the commit")


def ports_reading_a_commit_held_unapplied(
    cluster: Cluster, max_lag: float, held: float
) -> set[int]:
    """PostgreSQL: the ports serving reads once a commit made after 3 quiet seconds has
    been received by every replica and held there unapplied for ``held`` seconds.

    Replay stays paused so that the moment between receiving and applying
    lasts; in life it is milliseconds, and a lag monitor landing in it failed a
    CI run.
    """
    with app_over(cluster, max_lag=max_lag) as built:
        client = webtest.TestApp(built.wsgi)
        client.get("/nothing")  # the first unit starts the lag monitor
        time.sleep(3)
        with replay_paused(cluster):
            commit_received(cluster)
            time.sleep(held)
            return served_ports(lambda: client.get("/where").json, 4)


def served_ports(get: Callable[[], dict[str, Any]], times: int) -> set[int]:
    """The ports of the servers that answered ``times`` calls of ``get``."""
    return {int(get()["port"]) for _ in range(times)}


@contextmanager
def app_over(cluster: Cluster, **options: Any) -> Iterator[App]:
    """The replica test app over ``cluster``, ``options`` for its Replicas; disposed after."""
    built = make_app(cluster.primary.url, [r.url for r in cluster.replicas], **options)
    try:
        yield built
    finally:
        for engine in [built.primary, *built.replicas]:
            engine.dispose()


def client_connection_ids(server: Server) -> set[int]:
    """The ids of ``server``'s client connections, besides the one asking.

    Ids rather than a count: connections other tests left to the garbage
    collector may close at any moment, but no id comes back.
    """
    engine = server.engine()
    try:
        with engine.connect() as connection:
            if server.kind == "postgresql":
                sql = (
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()"
                )
            else:
                sql = (
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'root' "
                    "AND ID <> CONNECTION_ID()"
                )
            return {int(row[0]) for row in connection.exec_driver_sql(sql)}
    finally:
        engine.dispose()
