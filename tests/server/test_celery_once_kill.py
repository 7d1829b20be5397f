"""A worker killed between its commit and its ack: with ``once`` the body does not run again.

A real ``celery worker --pool solo`` process runs ``once_app`` on the shared
Redis (keys under a prefix of this test's own). The task has
``acks_late=True``; its first run commits a row, then an after-commit hook
SIGKILLs the worker before Celery acks the message. A second worker
starts; once the 2 s visibility timeout has passed, Redis makes the
unacked message visible again and the second worker receives it: the test
checks the delivery really happened twice (the workers' ``task_prerun``
notes) and counts the body's runs and the rows. With ``once`` the second
delivery finds the committed record: one run, one row. The control
(``task_base(db)`` without ``once``) runs the body again: two runs, two rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from support import database_url

from wsgi_sqla.celery import task_runs

from .support import HERE, ROOT, app_tables, until

ONCE_APP = HERE / "once_app.py"
CELERY = Path(sys.executable).with_name("celery")
REDIS_URL = os.environ.get("WSGI_SQLA_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_or_skip() -> object:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL} ({exc}); set WSGI_SQLA_REDIS_URL")
    return client


@contextmanager
def solo_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery worker --pool solo`` until the block ends (or it is killed)."""
    command = [str(CELERY), "-A", "once_app", "worker", "--pool", "solo", "-Q", env["QUEUE"]]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    command += ["--loglevel", "INFO"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=HERE, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                break  # killed already, or failed: the test reads the log
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("db_name", ["sqlite", "postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize(
    ("once", "runs"), [pytest.param(True, 1, id="once"), pytest.param(False, 2, id="control")]
)
def test_a_worker_killed_after_the_commit_does_not_run_the_body_again(
    db_name: str, tmp_path: Path, once: bool, runs: int
) -> None:
    client = redis_or_skip()
    prefix = f"wsgi_sqla_once_{uuid.uuid4().hex}:"
    url = database_url(db_name, tmp_path)
    files = {name: tmp_path / name for name in ("runs", "deliveries", "killed.marker")}
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": prefix,
        "QUEUE": f"{prefix}queue",
        "ONCE": "1" if once else "0",
        "RUNS_FILE": str(files["runs"]),
        "DELIVERIES_FILE": str(files["deliveries"]),
        "KILL_MARKER": str(files["killed.marker"]),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
    }
    try:
        with app_tables(ONCE_APP, url) as module:
            engine = module.engine  # the fixture's is another file on SQLite
            task_runs.metadata.drop_all(engine)
            task_runs.metadata.create_all(engine)
            sender = module.broker(prefix)
            task_id = str(uuid.uuid4())
            sender.send_task(
                "once_app.write_row", args=(task_id,), task_id=task_id, queue=env["QUEUE"]
            )

            with solo_worker(env, tmp_path / "first.log") as first:
                first.wait(60)
            first_log = (tmp_path / "first.log").read_text()
            assert first.returncode == -signal.SIGKILL, first_log
            Row = module.Row

            def rows() -> int:
                with engine.connect() as connection:
                    return int(connection.scalar(select(func.count()).select_from(Row)) or 0)

            assert rows() == 1, "the first run committed before the kill"

            time.sleep(2.5)  # the visibility timeout: the unacked message is visible again
            with solo_worker(env, tmp_path / "second.log"):
                assert until(lambda: len(lines(files["deliveries"])) >= 2, timeout=60), (
                    tmp_path / "second.log"
                ).read_text()
                finished = "already ran and committed" if once else "succeeded in"
                assert until(
                    lambda: finished in (tmp_path / "second.log").read_text(), timeout=30
                ), (tmp_path / "second.log").read_text()
            second_log = (tmp_path / "second.log").read_text()

            deliveries = lines(files["deliveries"])
            assert len(deliveries) == 2, deliveries
            assert all(task_id in line for line in deliveries), deliveries
            assert deliveries[1].endswith("redelivered=True"), deliveries
            assert len(lines(files["runs"])) == runs, (deliveries, second_log)
            assert rows() == runs, second_log
            with engine.connect() as connection:
                recorded = connection.scalar(select(func.count()).select_from(task_runs.table))
            assert recorded == (1 if once else 0)
            print(  # the report reads it with -s
                f"\n{db_name} once={once}: deliveries={len(deliveries)} "
                f"body runs={len(lines(files['runs']))} rows={rows()} records={recorded}"
            )
            task_runs.metadata.drop_all(engine)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))  # type: ignore[attr-defined]
        if keys:
            client.delete(*keys)  # type: ignore[attr-defined]
