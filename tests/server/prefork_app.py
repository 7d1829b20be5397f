"""The Celery application the prefork worker test runs: ``celery -A prefork_app worker``.

Its ``worker_init`` handler touches the database, as an application's
start-up check would: the worker's main process then holds a pooled
connection when its prefork pool forks the children. Each task records
which process ran it and which server-side connection it used, in
``prefork_calls``, committed by the task's own unit of work.

``DATABASE_URL`` says where the database is, ``BROKER_DIR`` where the
filesystem broker keeps its messages (no broker server needed), and
``TASK_BASE`` which base the task has: ``wsgi_sqla`` (``task_base(db)``) or
``plain`` (Celery's own ``Task``, committing by hand: the control). The
task is not shared (``shared=False``): the test process imports this module
too, and a shared task would join every Celery app it creates afterwards.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.signals import worker_init
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla.celery import task_base


class Base(DeclarativeBase):
    pass


class Call(Base):
    __tablename__ = "prefork_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(20))  # "main" (the worker_init check) or "task"
    pid: Mapped[int] = mapped_column(Integer)
    backend: Mapped[int] = mapped_column(Integer)


engine, db = served_database()
BACKEND = (
    "SELECT pg_backend_pid()" if engine.dialect.name == "postgresql" else "SELECT CONNECTION_ID()"
)


def broker(directory: str) -> Celery:
    app = Celery("prefork_app", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = {
        "data_folder_in": directory,
        "data_folder_out": directory,
        "control_folder": os.path.join(directory, "control"),
        "polling_interval": 0.05,
    }
    app.conf.worker_hijack_root_logger = False
    app.conf.worker_prefetch_multiplier = 1
    return app


app = broker(os.environ.get("BROKER_DIR", ""))
WSGI_SQLA = os.environ.get("TASK_BASE", "wsgi_sqla") == "wsgi_sqla"


def record(role: str) -> None:
    backend = int(db.execute(text(BACKEND)).scalar_one())
    db.add(Call(role=role, pid=os.getpid(), backend=backend))


@app.task(name="prefork_app.which_backend", base=task_base(db) if WSGI_SQLA else Task, shared=False)
def which_backend() -> None:
    if WSGI_SQLA:
        record("task")  # the task's unit of work commits and removes
        return
    try:
        record("task")
        db.commit()
    finally:
        db.remove()


@worker_init.connect
def startup_check(sender: Any, **_: Any) -> None:
    """In the worker's main process, before its pool forks: one pooled connection."""
    if getattr(sender, "app", None) is not app:
        return  # another app's worker (the test process imports this module too)
    try:
        record("main")
        db.commit()
    finally:
        db.remove()
