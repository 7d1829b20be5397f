"""Fixtures: a primary + two streaming replicas per database, and the app over them.

``cluster`` is parametrised over PostgreSQL and MariaDB; each cluster starts
the first time a test needs it (about 10 s on this machine) and is stopped
by pid when the test session ends. Each test gets the table
``replica_items`` fresh, created on the primary and replicated, every
replica running and with its apply delay back at 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from support import missing

from harness.clusters import Cluster, mariadb_cluster, postgresql_cluster
from harness.net import Unavailable

from .checks import SECRET, app_over
from .replica_app import App, Base

_STARTERS = {"postgresql": postgresql_cluster, "mariadb": mariadb_cluster}


@pytest.fixture(scope="session")
def _clusters() -> Iterator[tuple[contextlib.ExitStack, dict[str, Cluster]]]:
    with contextlib.ExitStack() as stack:
        yield stack, {}


@pytest.fixture(params=list(_STARTERS))
def cluster(
    request: pytest.FixtureRequest,
    _clusters: tuple[contextlib.ExitStack, dict[str, Cluster]],
) -> Cluster:
    stack, running = _clusters
    kind: str = request.param
    if kind not in running:
        try:
            running[kind] = stack.enter_context(_STARTERS[kind](2))
        except Unavailable as error:
            missing(str(error))
    started = running[kind]
    for replica in started.replicas:
        if replica.pid is None:
            replica.start()
        if replica.delay:
            replica.set_delay(0)
    engine = started.primary.engine()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    engine.dispose()
    started.wait_caught_up()
    return started


@pytest.fixture
def app(cluster: Cluster) -> Iterator[App]:
    with app_over(cluster, backoff=0.5) as built:
        yield built


@pytest.fixture
def signed_app(cluster: Cluster) -> Iterator[App]:
    with app_over(cluster, secret=SECRET) as built:
        yield built
