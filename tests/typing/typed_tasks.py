"""A user's Celery tasks module: must pass pyright strict and ``mypy --strict`` with no ignores.

With only ``wsgi_sqla[celery]`` installed (the extra brings ``celery-types``),
``SessionTask``'s base and metaclass are known types, so subclassing it and
decorating a task with it report nothing unknown.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from typing_extensions import assert_type

from wsgi_sqla.celery import SessionTask, task_base

db: scoped_session[Session] = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
celery_app = Celery("typed_tasks", broker="memory://")


class DbTask(SessionTask[..., None]):
    sessions = (db,)


@celery_app.task(base=DbTask)
def rename(user_id: int, name: str) -> None:
    db.get_bind()


@celery_app.task(base=task_base(db))
def count(limit: int) -> int:
    return limit


def exercise() -> None:
    assert_type(rename(1, "ann"), None)
    rename.delay(1, "ann")
    count.delay(3)
