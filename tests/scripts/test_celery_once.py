"""wsgi_sqla.celery ``once``: a task body whose call committed never runs again.

Each test runs on SQLite, PostgreSQL and MariaDB. The tasks write an
``Effect`` row (no unique key: a body that ran twice leaves two rows) and
count their runs; ``task.apply(task_id=...)`` plays a delivery with that
id, and the in-process worker (Celery's test worker on the in-memory
broker) a real one. The end-to-end test with a worker killed between the
commit and the ack is tests/server/test_celery_once_kill.py.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, MetaData, String, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from support import Boom, make_engine

from wsgi_sqla import ActiveRecordMixin, force_rollback, resolve_in_doubt
from wsgi_sqla.celery import SessionTask, task_base, task_runs
from wsgi_sqla.testing import count_round_trips

app = Celery(
    "wsgi_sqla_once_tests", broker="memory://", backend="cache+memory://", set_as_current=False
)
app.conf.worker_hijack_root_logger = False
app.conf.broker_transport_options = {"polling_interval": 0.01}

once_db: scoped_session[Session] = scoped_session(sessionmaker())


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = once_db
    metadata = MetaData()


class Effect(Base):
    __tablename__ = "wsgi_sqla_once_effects"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(80))


OnceTask = task_base(once_db, once=True)
PlainTask = task_base(once_db)
runs: list[str] = []
fail_next: list[bool] = []
barrier: list[threading.Barrier] = []


@app.task(base=OnceTask, shared=False)
def add_effect(label: str) -> dict[str, Any]:
    runs.append(label)
    Effect(label=label).save()
    if fail_next:
        fail_next.pop()
        raise Boom(f"failed after adding {label}")
    if barrier:
        barrier[0].wait(10)
    return {"label": label, "n": len(runs)}


@app.task(base=PlainTask, shared=False)
def add_effect_plain(label: str) -> None:
    runs.append(label)
    Effect(label=label).save()


@app.task(base=OnceTask, shared=False)
def add_effect_rolled_back(label: str) -> None:
    runs.append(label)
    Effect(label=label).save()
    force_rollback()


@app.task(base=OnceTask, shared=False)
def add_effect_returning_an_object(label: str) -> object:
    runs.append(label)
    Effect(label=label).save()
    return object()


def order_key(order_id: int, **_: object) -> str:
    """The key of a charge: its order, whatever the task id and the other arguments."""
    return f"charge:{order_id}"


class ByOrder(SessionTask):  # type: ignore[type-arg]
    sessions = (once_db,)
    once = order_key


@app.task(base=ByOrder, shared=False)
def charge(order_id: int, amount: int = 0) -> int:
    runs.append(f"charge {order_id}")
    Effect(label=f"charge {order_id} {amount}").save()
    return amount


def not_a_str(label: str) -> Any:
    """A key callable that breaks its contract (a key is a str)."""
    return 42


@app.task(base=task_base(once_db, once=not_a_str), shared=False)
def numbered(label: str) -> None:
    runs.append(label)


@pytest.fixture
def tables(engine: Engine) -> Iterator[Engine]:
    """The effects table and ``task_runs.table`` on the database under test."""
    once_db.configure(bind=engine)
    for metadata in (Base.metadata, task_runs.metadata):
        metadata.drop_all(engine)
        metadata.create_all(engine)
    runs.clear()
    fail_next.clear()
    barrier.clear()
    yield engine
    once_db.remove()
    for metadata in (Base.metadata, task_runs.metadata):
        metadata.drop_all(engine)
    once_db.configure(bind=None)


def effects(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.scalars(select(Effect.label)))


def records(engine: Engine) -> list[tuple[str, str, str | None]]:
    table = task_runs.table
    with engine.connect() as connection:
        rows = connection.execute(select(table.c.task, table.c.key, table.c.result))
        return sorted((row[0], row[1], row[2]) for row in rows)


# -- a second delivery of the same task id ----------------------------------------


def test_a_second_run_of_the_same_task_id_returns_the_stored_result_without_the_body(
    tables: Engine,
) -> None:
    first = add_effect.apply(args=("a",), task_id="id-1")
    second = add_effect.apply(args=("a",), task_id="id-1")

    assert first.get() == {"label": "a", "n": 1}
    assert second.get() == {"label": "a", "n": 1}
    assert runs == ["a"]
    assert effects(tables) == ["a"]
    assert records(tables) == [(add_effect.name, "id-1", '{"label": "a", "n": 1}')]


def test_another_task_id_runs_again(tables: Engine) -> None:
    add_effect.apply(args=("a",), task_id="id-1").get()
    add_effect.apply(args=("a",), task_id="id-2").get()

    assert runs == ["a", "a"]
    assert effects(tables) == ["a", "a"]


def test_a_message_delivered_twice_to_a_worker_runs_its_body_once(tables: Engine) -> None:
    task_id = str(uuid.uuid4())
    with start_worker(app, perform_ping_check=False, shutdown_timeout=30):
        first = add_effect.apply_async(("a",), task_id=task_id)
        assert first.get(timeout=30, interval=0.01) == {"label": "a", "n": 1}
        again = add_effect.apply_async(("a",), task_id=task_id)
        assert again.get(timeout=30, interval=0.01) == {"label": "a", "n": 1}

    assert runs == ["a"]
    assert effects(tables) == ["a"]


def test_a_key_derived_from_the_arguments_runs_once_per_key(tables: Engine) -> None:
    assert charge.apply(args=(7,), kwargs={"amount": 5}, task_id="x").get() == 5
    assert charge.apply(args=(7,), kwargs={"amount": 9}, task_id="y").get() == 5
    assert charge.apply(args=(8,), task_id="x").get() == 0

    assert runs == ["charge 7", "charge 8"]
    assert effects(tables) == ["charge 7 5", "charge 8 0"]
    assert [key for _, key, _ in records(tables)] == ["charge:7", "charge:8"]


def test_a_result_that_is_not_json_is_stored_as_null_and_a_rerun_returns_none(
    tables: Engine,
) -> None:
    assert add_effect_returning_an_object.apply(args=("a",), task_id="id").get() is not None
    assert add_effect_returning_an_object.apply(args=("a",), task_id="id").get() is None

    assert runs == ["a"]
    assert records(tables) == [(add_effect_returning_an_object.name, "id", None)]


# -- a call that does not commit records nothing ---------------------------------------


def test_a_task_that_raises_records_nothing_and_its_redelivery_runs_again(
    tables: Engine,
) -> None:
    fail_next.append(True)
    with pytest.raises(Boom):
        add_effect.apply(args=("a",), task_id="id-1").get()
    assert records(tables) == []
    assert effects(tables) == []

    assert add_effect.apply(args=("a",), task_id="id-1").get() == {"label": "a", "n": 2}
    assert runs == ["a", "a"]
    assert effects(tables) == ["a"]
    assert len(records(tables)) == 1


def test_a_task_that_forces_a_rollback_records_nothing(tables: Engine) -> None:
    add_effect_rolled_back.apply(args=("a",), task_id="id-1").get()
    add_effect_rolled_back.apply(args=("a",), task_id="id-1").get()

    assert runs == ["a", "a"]
    assert records(tables) == []
    assert effects(tables) == []


def test_a_direct_call_has_no_task_id_and_records_nothing(tables: Engine) -> None:
    add_effect("a")
    add_effect("a")

    assert runs == ["a", "a"]
    assert records(tables) == []


# -- two workers with the same task id at once ---------------------------------------------


@pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)
def test_a_concurrent_duplicate_rolls_back_and_is_ignored_without_a_retry(
    tables: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    barrier.append(threading.Barrier(2))  # both bodies ran before either records
    outcomes: list[Any] = []

    def deliver() -> None:
        outcomes.append(add_effect.apply(args=("a",), task_id="id-1"))

    with caplog.at_level(logging.WARNING, logger="wsgi_sqla"):
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert sorted(result.state for result in outcomes) == ["IGNORED", "SUCCESS"]
    assert runs == ["a", "a"]  # both bodies ran; only one committed
    assert effects(tables) == ["a"]
    assert len(records(tables)) == 1
    assert "already ran: another call committed the same key" in caplog.text


# -- the cost ---------------------------------------------------------------------------------


def test_without_once_a_task_costs_no_extra_statement_and_with_it_two(tables: Engine) -> None:
    with tables.connect():
        pass
    with count_round_trips(tables) as plain:
        add_effect_plain.apply(args=("a",), task_id="id-1").get()
    with count_round_trips(tables) as once:
        add_effect.apply(args=("b",), task_id="id-2").get()
    with count_round_trips(tables) as again:
        add_effect.apply(args=("b",), task_id="id-2").get()

    assert plain.statements == 1  # the body's INSERT, nothing else
    assert once.statements == 3  # the SELECT of the record, the body's INSERT, the record
    assert again.statements == 1  # the SELECT that finds the record


@pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)
def test_with_resolve_in_doubt_a_once_task_reads_no_transaction_id_and_a_plain_one_does(
    tables: Engine,
) -> None:
    resolving = resolve_in_doubt(make_engine(tables.url.render_as_string(hide_password=False)))
    once_db.configure(bind=resolving)
    try:
        with resolving.connect():
            pass
        with count_round_trips(resolving) as plain:
            add_effect_plain.apply(args=("a",), task_id="id-1").get()
        with count_round_trips(resolving) as once:
            add_effect.apply(args=("b",), task_id="id-2").get()
    finally:
        once_db.remove()
        resolving.dispose()

    assert plain.statements == 1 + 1  # the body's INSERT, the transaction id
    assert once.statements == 3  # as without the option: its record settles a doubt


# -- expiry and configuration -----------------------------------------------------------------


def test_expire_deletes_the_records_older_than_the_bound(tables: Engine) -> None:
    add_effect.apply(args=("a",), task_id="old").get()
    later = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    later += datetime.timedelta(days=8)
    with tables.begin() as connection:
        connection.execute(
            task_runs.table.insert().values(task="t", key="recent", ran_at=later, result=None)
        )

    deleted = task_runs.expire(once_db, datetime.timedelta(days=7), now=later)

    assert deleted == 1
    assert [key for _, key, _ in records(tables)] == ["recent"]
    assert add_effect.apply(args=("a",), task_id="old").get() == {"label": "a", "n": 2}


def test_expire_needs_a_timedelta(tables: Engine) -> None:
    with pytest.raises(TypeError, match=r"older_than must be a datetime\.timedelta"):
        task_runs.expire(once_db, 7)  # type: ignore[arg-type]


def test_the_table_has_its_own_metadata() -> None:
    assert task_runs.table.metadata is task_runs.metadata
    assert list(task_runs.metadata.tables) == ["wsgi_sqla_task_runs"]
    assert [c.name for c in task_runs.table.primary_key] == ["task", "key"]


def test_once_must_be_a_bool_or_a_callable() -> None:
    with pytest.raises(TypeError, match=r"Broken.once must be True, False or a callable"):

        class Broken(SessionTask):  # type: ignore[type-arg]
            sessions = (once_db,)
            once = "yes"  # type: ignore[assignment]


def test_a_key_callable_returning_something_else_than_a_str_fails_the_call(
    tables: Engine,
) -> None:
    with pytest.raises(TypeError, match="must return a non-empty str"):
        numbered.apply(args=("a",), task_id="id").get()
    assert runs == []


class DbTask(SessionTask):  # type: ignore[type-arg]
    sessions = (once_db,)


@app.task(base=DbTask, once=True, shared=False)
def add_effect_with_the_celery_option(label: str) -> str:
    runs.append(label)
    Effect(label=label).save()
    return label


def test_once_as_an_option_of_celerys_task_decorator(tables: Engine) -> None:
    add_effect_with_the_celery_option.apply(args=("a",), task_id="id").get()
    add_effect_with_the_celery_option.apply(args=("a",), task_id="id").get()

    assert runs == ["a"]
    assert effects(tables) == ["a"]
