"""A task body runs once: the record of a task call, committed with the call's own work.

:class:`~wsgi_sqla.celery.SessionTask` with ``once`` set calls :func:`run_once`
instead of running the body directly. Within the call's unit of work it

1. reads the record of ``(task name, key)``; if there is one, the body
   already ran and committed: it returns the result stored in the record
   without running the body;
2. runs the body, flushes what it wrote, and inserts the record (with the
   body's result as JSON when it is JSON-able) through the first session;
3. lets the unit commit, as every task call does: the record commits if and
   only if the body's writes do; so a ``COMMIT`` that loses its connection
   is settled by looking the record up on a fresh connection (found: the
   call committed and returns its result; not found:
   :class:`~wsgi_sqla.NotCommittedError`, which Celery may retry).

Two statements per call, both on the first session's database. A worker
that runs the same key at the same moment as another gets the unique key
violation on its insert (PostgreSQL and MariaDB make it wait for the other
transaction, then fail): its unit rolls back, the duplicate is logged, and
the call ends with :class:`celery.exceptions.Ignore`, which Celery acks
without a retry and without touching the result the first run stored.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from celery.exceptions import Ignore
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import scoped_session

from ._in_doubt import resolve_by
from ._transaction import transaction
from ._unit import UnitOfWork, unit_of_work

__all__ = ["TaskRuns", "run_once", "task_runs"]

logger = logging.getLogger("wsgi_sqla")

#: Longest key the table holds (and longest task name).
KEY_LENGTH = 255


class TaskRuns:
    """The table of task calls that committed, for ``once`` tasks.

    ``task_runs.table`` is a :class:`sqlalchemy.Table` on a
    :class:`~sqlalchemy.MetaData` of its own (``task_runs.metadata``): add
    that metadata to Alembic's ``target_metadata`` (a list is accepted) to
    get the table in your migrations, or create it once with
    ``task_runs.table.create(engine, checkfirst=True)``. It lives on the
    database of the first session of the task's base.

    Columns: ``task`` (the task's name) and ``key`` (the task id, or what
    the task's ``once`` callable derived from the arguments) make the
    primary key; ``ran_at`` is when the call committed (naive UTC);
    ``result`` is the body's return value as JSON, or ``NULL`` when it was
    not JSON-able.
    """

    def __init__(self, name: str = "wsgi_sqla_task_runs") -> None:
        self.metadata: MetaData = MetaData()
        self.table: Table = Table(
            name,
            self.metadata,
            Column("task", String(KEY_LENGTH), nullable=False),
            Column("key", String(KEY_LENGTH), nullable=False),
            Column("ran_at", DateTime(), nullable=False, index=True),
            Column("result", Text(), nullable=True),
            PrimaryKeyConstraint("task", "key", name=f"{name}_pkey"),
        )

    def expire(
        self,
        session: scoped_session[Any],
        older_than: datetime.timedelta,
        *,
        now: datetime.datetime | None = None,
    ) -> int:
        """Delete the records older than ``older_than``; how many were deleted.

        Run it from a periodic task or a cron job, in a unit of work of its
        own (``transaction(session)``, joined if one is running). Keep
        ``older_than`` well above the longest time a message can take to be
        redelivered (the broker's visibility timeout, a retry's countdown,
        a worker down for maintenance): a task redelivered after its record
        expired runs again. ``now`` (naive UTC) is for tests.

        :raises TypeError: when ``older_than`` is not a :class:`datetime.timedelta`.
        """
        if not isinstance(older_than, datetime.timedelta):
            raise TypeError(
                f"task_runs.expire(): older_than must be a datetime.timedelta, got {older_than!r}"
            )
        cutoff = (now or _utcnow()) - older_than
        with transaction(session):
            deleted = session.execute(delete(self.table).where(self.table.c.ran_at < cutoff))
        return int(getattr(deleted, "rowcount", 0) or 0)


#: The one table every ``once`` task records its calls in.
task_runs: TaskRuns = TaskRuns()


class _AlreadyRan(Exception):
    """Raised inside the unit when another worker committed the same key meanwhile."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _stored(result: object) -> str | None:
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return None


def task_key(
    once: object, task_id: str | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> str | None:
    """The key a call records: the task id for ``once=True``, else ``once(*args, **kwargs)``.

    ``None`` for a call that has no task id (a direct call ``task(...)``):
    it runs as an ordinary unit and records nothing.

    :raises TypeError: when the callable returns something other than a
        non-empty ``str`` of at most 255 characters.
    """
    if once is True:
        return task_id
    assert callable(once)
    key = once(*args, **kwargs)
    if not isinstance(key, str) or not key or len(key) > KEY_LENGTH:
        raise TypeError(
            f"once: the key callable must return a non-empty str of at most {KEY_LENGTH} "
            f"characters, got {key!r}"
        )
    return key


def _recorded(bind: Engine, name: str, key: str) -> tuple[bool, str]:
    """Whether the record of ``(name, key)`` is committed, asked on a fresh connection."""
    table = task_runs.table
    with bind.connect() as connection:
        found = connection.execute(
            select(table.c.key).where(table.c.task == name, table.c.key == key)
        ).first()
    return found is not None, f"task run {name}[{key}] {'found' if found else 'not found'}"


def run_once(
    name: str,
    key: str,
    sessions: tuple[scoped_session[Any], ...],
    start: Callable[[tuple[scoped_session[Any], ...]], UnitOfWork],
    body: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``body`` as one unit of work over ``sessions``, once per ``(name, key)``.

    See the module docstring for the steps. Returns the body's result, or,
    when the record exists already, the result stored in it (``None`` if it
    was not JSON-able).

    :raises celery.exceptions.Ignore: when another call committed the same
        key while this one ran (its work is rolled back).
    """
    table = task_runs.table
    db = sessions[0]
    try:
        with unit_of_work(sessions, start, "task") as unit:
            found = db.execute(
                select(table.c.result).where(table.c.task == name, table.c.key == key)
            ).first()
            if found is not None:
                logger.info(
                    "task %s[%s] already ran and committed; its body is not run again",
                    name,
                    key,
                )
                return None if found[0] is None else json.loads(found[0])
            result = body(*args, **kwargs)
            db.flush()  # the body's own failures surface here, not as a duplicate
            try:
                db.execute(
                    insert(table).values(
                        task=name, key=key, ran_at=_utcnow(), result=_stored(result)
                    )
                )
            except IntegrityError as error:
                raise _AlreadyRan from error
            bind = db.get_bind()
            if isinstance(bind, Engine):
                # The record commits with the work: finding it settles a COMMIT in doubt.
                resolve_by(unit, db.registry(), partial(_recorded, bind, name, key))
            return result
    except _AlreadyRan:
        logger.warning(
            "task %s[%s] already ran: another call committed the same key while this one "
            "ran; this call's work was rolled back and the task is not retried",
            name,
            key,
        )
        raise Ignore(f"task {name}[{key}] already ran") from None
