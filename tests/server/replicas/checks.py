"""Helpers for the replica tests: state read through the test's own connections."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sqlalchemy import Engine, func, insert, select

from harness.clusters import Cluster, Server
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
