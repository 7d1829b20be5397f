"""Celery's prefork pool: no child uses a connection its main process opened.

A real ``celery worker --pool prefork`` process runs ``prefork_app``, whose
start-up check leaves a pooled connection in the main process before the
pool forks its child; the test sends tasks through the filesystem broker and
reads, through its own connection, which server-side connection each task
used. The control is the same task on Celery's plain ``Task``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from support import database_url

from .support import HERE, ROOT, app_tables, until

PREFORK_APP = HERE / "prefork_app.py"
CELERY = Path(sys.executable).with_name("celery")


@contextmanager
def prefork_worker(url: str, base: str, broker_dir: Path, log: Path) -> Iterator[None]:
    """A ``celery worker`` with one prefork child, until the block ends."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BROKER_DIR": str(broker_dir),
        "TASK_BASE": base,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
    }
    command = [str(CELERY), "-A", "prefork_app", "worker", "--pool", "prefork"]
    command += ["--concurrency", "1", "--without-mingle", "--without-gossip"]
    command += ["--without-heartbeat", "--loglevel", "INFO"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=HERE, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize(
    ("base", "uses_the_main_connection"),
    [pytest.param("wsgi_sqla", False, id="task_base"), pytest.param("plain", True, id="control")],
)
def test_a_prefork_child_never_uses_the_main_processs_connection(
    db_name: str, engine: Engine, tmp_path: Path, base: str, uses_the_main_connection: bool
) -> None:
    url = database_url(db_name, tmp_path)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    with (
        app_tables(PREFORK_APP, url) as module,
        prefork_worker(url, base, broker_dir, tmp_path / "celery.log"),
    ):
        sender = module.broker(str(broker_dir))
        for _ in range(3):
            sender.send_task("prefork_app.which_backend")
        Call = module.Call
        rows: list[tuple[str, int, int]] = []

        def every_task_recorded() -> bool:
            with engine.connect() as connection:
                rows[:] = connection.execute(select(Call.role, Call.pid, Call.backend)).all()
            return sum(role == "task" for role, _, _ in rows) == 3

        until(every_task_recorded, timeout=60)
    (main,) = [(pid, backend) for role, pid, backend in rows if role == "main"]
    tasks = [(pid, backend) for role, pid, backend in rows if role == "task"]
    assert len(tasks) == 3, (tasks, (tmp_path / "celery.log").read_text())
    assert all(pid != main[0] for pid, _ in tasks), "the tasks ran in the main process"
    assert any(backend == main[1] for _, backend in tasks) is uses_the_main_connection
