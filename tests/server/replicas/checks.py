"""Helpers for the replica tests: state read through the test's own connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy import Engine, func, select

from wsgi_sqla.testing import RoundTrips, count_round_trips

from .cluster import Cluster
from .replica_app import Item


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
