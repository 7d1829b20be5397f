"""A ``once`` Celery task whose COMMIT is cut: its own record settles the doubt.

A task of ``task_base(db, once=True)`` records its call in its own
transaction (tests/scripts/test_celery_once.py), so the record is committed
if and only if the work is, on any database. When the task's COMMIT loses
its connection, the unit looks the record up on a fresh connection: found,
the call returns its result; not found, it raises
:class:`wsgi_sqla.NotCommittedError`. The task's database is reached
through a :class:`CommitCuttingProxy`; the test reads it directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from wsgi_sqla import NotCommittedError
from wsgi_sqla.celery import task_base, task_runs

from .doubt import Doubt, rows

pytestmark = pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)

app = Celery(
    "wsgi_sqla_in_doubt_once", broker="memory://", backend="cache+memory://", set_as_current=False
)
task_db: scoped_session[Session] = scoped_session(sessionmaker())


@app.task(base=task_base(task_db, once=True), shared=False)
def add_row(tag: str) -> str:
    task_db.execute(insert(rows).values(tag=tag))
    return tag


@pytest.fixture
def recorded(doubt: Doubt) -> Iterator[Doubt]:
    """The proxied database with the task-run records' table; the task bound to it."""
    task_runs.metadata.drop_all(doubt.direct)
    task_runs.metadata.create_all(doubt.direct)
    task_db.configure(bind=doubt.proxied)
    try:
        yield doubt
    finally:
        task_db.remove()
        task_db.configure(bind=None)
        task_runs.metadata.drop_all(doubt.direct)


def task_records(engine: Engine, task_id: str) -> int:
    table = task_runs.table
    with engine.connect() as connection:
        query = select(func.count()).select_from(table).where(table.c.key == task_id)
        return int(connection.execute(query).scalar_one())


def test_once_task_whose_commit_was_cut_after_the_server_got_it_returns_its_result(
    recorded: Doubt,
) -> None:
    tag, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    recorded.proxy.arm()

    result = add_row.apply(args=(tag,), task_id=task_id)

    assert recorded.proxy.cuts == 1
    assert result.get() == tag
    assert recorded.copies(tag) == 1
    assert task_records(recorded.direct, task_id) == 1


def test_once_task_whose_commit_was_cut_before_the_server_got_it_raises_not_committed(
    recorded: Doubt,
) -> None:
    tag, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    recorded.proxy.arm(forward=False)

    result = add_row.apply(args=(tag,), task_id=task_id)

    assert recorded.proxy.cuts == 1
    with pytest.raises(NotCommittedError):
        result.get()
    assert recorded.copies(tag) == 0
    assert task_records(recorded.direct, task_id) == 0
