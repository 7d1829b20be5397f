"""Read replicas outside a request: ``transaction()`` blocks and Celery tasks.

A block or a task runs on the primary unless it names ``replicas``. A task
enqueued from an after-commit hook of a request that wrote carries that
commit's position, so that a worker reading from replicas sees the write.
Owners given one ``Replicas`` share its back-off and lag bound, and a block
changes neither. The worker is Celery's in-process test worker, over the in-memory broker:
the message, its headers included, is serialised and received as in
production.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

import wsgi_sqla
from harness.clusters import Cluster
from wsgi_sqla import Replicas, ReplicaWriteError, SessionMiddleware, after_commit, transaction
from wsgi_sqla.celery import task_base

from ..support import until
from .checks import app_over, rows_everywhere, served_ports, writing_on
from .replica_app import App, Item, make_app, where_am_i

# -- transaction() ----------------------------------------------------------------------


def test_a_transaction_block_uses_the_primary(app: App, cluster: Cluster) -> None:
    with transaction(app.db):
        where = where_am_i(app.db)
    assert where == {"port": cluster.primary.port, "replica": False}


def test_a_transaction_block_with_replicas_reads_from_a_replica(app: App, cluster: Cluster) -> None:
    with transaction(app.db, replicas=app.config):
        where = where_am_i(app.db)
    assert where["replica"] is True
    assert where["port"] in {r.port for r in cluster.replicas}


def test_a_write_in_a_transaction_block_with_replicas_fails_and_writes_nothing(
    app: App, cluster: Cluster
) -> None:
    with (
        pytest.raises(ReplicaWriteError, match=r"^this transaction\(\) block was routed to a "),
        transaction(app.db, replicas=app.config),
    ):
        app.db.add(Item(name="not here"))
        app.db.flush()
    assert rows_everywhere(cluster) == {"primary": 0, "replica0": 0, "replica1": 0}


def test_a_transaction_block_with_every_replica_down_runs_on_the_primary(
    app: App, cluster: Cluster
) -> None:
    for replica in cluster.replicas:
        replica.stop()
    with transaction(app.db, replicas=app.config):
        where = where_am_i(app.db)
    assert where == {"port": cluster.primary.port, "replica": False}


def test_a_transaction_inside_a_request_joins_its_route(app: App) -> None:
    seen: list[dict[str, Any]] = []

    def view(environ: Any, start_response: Any) -> list[bytes]:
        with transaction(app.db):
            seen.append(where_am_i(app.db))
        start_response("200 OK", [])
        return [b""]

    middleware = SessionMiddleware(view, app.db, replicas=app.config)
    webtest.TestApp(middleware).get("/")
    assert seen[0]["replica"] is True


# -- Celery tasks ------------------------------------------------------------------------


_apps = itertools.count()


class Tasks:
    """A Celery app whose task reads an item from a replica, and a web app that enqueues it."""

    def __init__(self, app: App) -> None:
        self.celery = Celery(
            "wsgi_sqla_replica_tests",
            broker="memory://",
            backend="cache+memory://",
            set_as_current=False,
        )
        self.celery.conf.worker_hijack_root_logger = False
        self.celery.conf.broker_transport_options = {"polling_interval": 0.01}
        db = app.db

        # Celery warns when a name is registered twice in one process: one name per app.
        name = f"read_item_{next(_apps)}"

        @self.celery.task(name=name, base=task_base(db, replicas=app.config))
        def read_item(item_id: int) -> dict[str, Any]:
            found = db.scalar(select(Item).where(Item.id == item_id)) is not None
            return {"found": found, **where_am_i(db)}

        self.read_item = read_item
        self.sent: list[Any] = []

        def view(environ: Any, start_response: Any) -> list[bytes]:
            item = Item(name="ann")
            db.add(item)
            db.flush()
            if environ["PATH_INFO"] == "/after-commit":
                after_commit(lambda item_id: self.sent.append(read_item.delay(item_id)), item.id)
            else:
                self.sent.append(item.id)
            start_response("201 Created", [])
            return [b""]

        self.web = webtest.TestApp(SessionMiddleware(view, db, replicas=app.config))

    def post_then_read(self, path: str) -> dict[str, Any]:
        """POST ``path``; the task it enqueued (or one enqueued after it) reads the item."""
        self.web.post(path, "", status=201)
        sent = self.sent.pop()
        result = sent if not isinstance(sent, int) else self.read_item.delay(sent)
        answer: dict[str, Any] = result.get(timeout=30)
        return answer


@pytest.fixture
def tasks(app: App) -> Iterator[Tasks]:
    built = Tasks(app)
    with start_worker(built.celery, perform_ping_check=False, shutdown_timeout=30):
        yield built


def test_a_task_enqueued_after_a_commit_reads_that_write_through_lagging_replicas(
    tasks: Tasks, cluster: Cluster
) -> None:
    for replica in cluster.replicas:
        replica.set_delay(1)
    tries = 50
    answers = [tasks.post_then_read("/after-commit") for _ in range(tries)]
    misses = sum(not a["found"] for a in answers)
    assert misses == 0, f"{misses} of {tries} tasks missed the write they were enqueued after"


def test_control_a_task_that_carries_no_position_misses_the_write_on_lagging_replicas(
    tasks: Tasks, cluster: Cluster
) -> None:
    # 3 s, not the 1 s the test above survives: MariaDB counts its delay in whole seconds
    # from the event's timestamp, so "1" applies a write 0-1 s later, and a worker slowed
    # by a loaded machine then found it as often as not (5 of 10 in one CI run).
    for replica in cluster.replicas:
        replica.set_delay(3)
    answers = [tasks.post_then_read("/enqueued-by-the-test") for _ in range(10)]
    assert all(a["replica"] for a in answers)
    assert sum(not a["found"] for a in answers) > 5


def test_a_task_whose_replica_has_the_position_runs_on_it(tasks: Tasks) -> None:
    # No delay: by the time the worker asks, a replica has usually replayed the commit.
    answers = [tasks.post_then_read("/after-commit") for _ in range(10)]
    assert all(a["found"] for a in answers)
    assert any(a["replica"] for a in answers)


def test_a_task_without_replicas_runs_on_the_primary(app: App, cluster: Cluster) -> None:
    celery = Celery("wsgi_sqla_plain", broker="memory://", backend="cache+memory://")
    celery.conf.worker_hijack_root_logger = False

    @celery.task(name=f"where_{next(_apps)}", base=task_base(app.db))
    def where() -> dict[str, Any]:
        return where_am_i(app.db)

    with start_worker(celery, perform_ping_check=False, shutdown_timeout=30):
        answer = where.delay().get(timeout=30)
    assert answer == {"port": cluster.primary.port, "replica": False}


def test_committed_positions_is_none_outside_an_after_commit_hook(app: App) -> None:
    with transaction(app.db):
        assert wsgi_sqla.committed_positions() is None


# -- one Replicas, several owners ----------------------------------------------------------


def test_owners_sharing_one_replicas_share_its_back_off(cluster: Cluster) -> None:
    only = cluster.replicas[0]
    built = make_app(cluster.primary.url, [only.url], backoff=30)
    try:
        only.stop()
        assert webtest.TestApp(built.wsgi).get("/where").json["replica"] is False
        only.start()
        # The request's failure keeps the block off the replica: one back-off, shared.
        with transaction(built.db, replicas=built.config):
            assert where_am_i(built.db)["replica"] is False
        # Control: replicas of their own have seen no failure and use it at once.
        with transaction(built.db, replicas=Replicas({built.db: built.replicas})):
            assert where_am_i(built.db) == {"port": only.port, "replica": True}
    finally:
        for engine in [built.primary, *built.replicas]:
            engine.dispose()


def test_a_transaction_block_does_not_reset_the_back_off(cluster: Cluster) -> None:
    only = cluster.replicas[0]
    built = make_app(cluster.primary.url, [only.url], backoff=0.5)
    client = webtest.TestApp(built.wsgi)
    try:
        # A block first: before Replicas, each block set every back-off back to 5 s.
        with transaction(built.db, replicas=built.config):
            assert where_am_i(built.db)["replica"] is True
        only.stop()
        assert client.get("/where").json["replica"] is False
        only.start()
        assert until(lambda: bool(client.get("/where").json["replica"]), timeout=3)
        assert built.config.primaries[0].replicas[0].backoff == 0.5
    finally:
        for engine in [built.primary, *built.replicas]:
            engine.dispose()


def test_owners_sharing_one_replicas_share_its_lag_bound(cluster: Cluster) -> None:
    fast, slow = cluster.replicas

    with app_over(cluster, max_lag=1) as built:
        client = webtest.TestApp(built.wsgi)

        def in_a_block() -> dict[str, Any]:
            with transaction(built.db, replicas=built.config):
                return where_am_i(built.db)

        client.get("/nothing")  # the first unit starts the lag monitor
        slow.set_delay(3)
        with writing_on(cluster):
            time.sleep(3)  # 2-3 s behind from now on (MariaDB counts whole seconds)
            by_requests = served_ports(lambda: client.get("/where").json, 10)
            by_blocks = served_ports(in_a_block, 10)
        assert slow.port not in by_requests | by_blocks
        assert fast.port in by_requests & by_blocks
