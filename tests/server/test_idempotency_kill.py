"""A worker killed mid-request does not block its key forever.

A keyed POST's view is running (its claim committed) when its gunicorn
worker is killed with SIGKILL: nothing of its work is committed. A retry
while the claim's lease runs gets 409; once the lease is over, the retry
takes the claim over, runs the view and commits: one order, two executions
(the killed one, which committed nothing, and the retry).
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from .support import TROUBLE, Reply, Serve, load_module, until
from .test_idempotency_servers import APP, orders_db, orders_in, post

__all__ = ["orders_db"]  # the fixture, imported for this module's tests

LEASE = 8.0
# The SIGKILL is ours: gunicorn reporting it is not trouble here.
KILLED_BY_US = re.compile(TROUBLE.pattern.replace("SIG(?!TERM)", "SIG(?!TERM|KILL)"))

pytestmark = pytest.mark.parametrize("db_name", ["sqlite", "postgresql", "mariadb"], indirect=True)


def lease_until(url: str) -> datetime.datetime:
    module = load_module(APP, url)
    try:
        with module.engine.connect() as connection:
            value = connection.execute(select(module.keys.table.c.lease_until)).scalar_one()
            assert isinstance(value, datetime.datetime)
            return value
    finally:
        module.engine.dispose()


def test_after_a_kill_9_mid_request_the_retry_runs_once_the_lease_is_over(
    gunicorn: Serve, orders_db: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.touch()
    server = gunicorn(
        "idempotency_app:application",
        database=orders_db,
        worker_class="gthread",
        workers=1,
        threads=4,
        env={"RUNS_FILE": str(runs), "LEASE": str(LEASE)},
    )
    server.trouble = KILLED_BY_US  # type: ignore[misc]
    lost: list[BaseException] = []

    def doomed() -> None:
        try:
            post(server, {"X-Sleep": "60"})
        except Exception as exc:  # the connection dies with the worker
            lost.append(exc)

    thread = threading.Thread(target=doomed)
    thread.start()
    assert until(lambda: runs.read_text().strip() != ""), "the view never started"
    os.kill(int(runs.read_text().split()[0]), signal.SIGKILL)
    thread.join(30)
    assert lost, "the request survived its worker"
    server.wait_for_workers(1)

    blocked: Reply = post(server)
    assert blocked.status == 409, blocked.body
    assert orders_in(orders_db) == 0

    wait = lease_until(orders_db) - datetime.datetime.now(datetime.timezone.utc).replace(
        tzinfo=None
    )
    time.sleep(max(0.0, wait.total_seconds()) + 0.2)
    retried = post(server)
    assert retried.status == 201, retried.body
    assert "Idempotent-Replayed" not in retried.headers
    assert len(runs.read_text().splitlines()) == 2
    assert orders_in(orders_db) == 1
    assert post(server).body == retried.body
