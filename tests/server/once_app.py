"""The Celery application the kill test runs: ``celery -A once_app worker --pool solo``.

One task, ``once_app.write_row``, with ``acks_late=True``: its body notes
that it ran (a line in ``RUNS_FILE``, outside the database) and writes a
``once_rows`` row. The first time it runs (no ``KILL_MARKER`` file yet) it
creates the marker and registers an after-commit hook that SIGKILLs the
worker process: the row is committed, the message is not acked. Every
delivery the worker receives is noted in ``DELIVERIES_FILE`` (a
``task_prerun`` handler), with its ``redelivered`` flag.

``ONCE`` is ``1`` for ``task_base(db, once=True)``, ``0`` for the control
(``task_base(db)``). The broker is the shared Redis: every key kombu uses
carries ``REDIS_PREFIX`` (``global_keyprefix``) so nothing else is
touched, and a visibility timeout of 2 s makes the unacked message
visible again quickly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_prerun
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import after_commit
from wsgi_sqla.celery import task_base

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "once_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(80))


engine, db = served_database()


def broker(prefix: str) -> Celery:
    """The app, on Redis keys that all start with ``prefix``."""
    app = Celery("once_app", broker=REDIS_URL, set_as_current=False)
    app.conf.broker_transport_options = {
        "global_keyprefix": prefix,
        "visibility_timeout": 2,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "polling_interval": 0.1,
    }
    app.conf.worker_hijack_root_logger = False
    app.conf.worker_prefetch_multiplier = 1
    app.conf.worker_enable_remote_control = False
    app.conf.broker_connection_retry_on_startup = True
    return app


app = broker(os.environ.get("REDIS_PREFIX", "wsgi_sqla_once_unset:"))
ONCE = os.environ.get("ONCE", "1") == "1"
QUEUE = os.environ.get("QUEUE", "wsgi_sqla_once_unset")


def _note(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as file:
            file.write(line + "\n")


@app.task(name="once_app.write_row", base=task_base(db, once=ONCE), acks_late=True, shared=False)
def write_row(task_id: str) -> int:
    _note("RUNS_FILE", f"{os.getpid()} {task_id}")
    db.add(Row(pid=os.getpid(), task_id=task_id))
    marker = Path(os.environ.get("KILL_MARKER", "/nonexistent/marker"))
    if marker.parent.is_dir() and not marker.exists():
        marker.touch()
        after_commit(os.kill, os.getpid(), signal.SIGKILL)  # committed, not acked
    return os.getpid()


@task_prerun.connect
def note_delivery(sender: Any = None, task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) != "once_app.write_row":
        return
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    _note("DELIVERIES_FILE", f"{os.getpid()} {task.request.id} redelivered={redelivered}")
