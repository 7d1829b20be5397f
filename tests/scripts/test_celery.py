"""wsgi_sqla.celery: every task call is one unit of work, run by a real worker.

The worker is Celery's in-process test worker (a WorkController in a thread,
solo pool) consuming the in-memory broker: tasks are serialised, sent,
received and executed as in production, in a thread with its own scoped
session. The tasks use a module-level scoped session that each test binds to
the database under test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from sqlalchemy import Engine, MetaData, String, insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from support import Boom

import wsgi_sqla
from wsgi_sqla import ActiveRecordMixin, after_commit, transaction
from wsgi_sqla.celery import SessionTask, task_base

celery_app = Celery(
    "wsgi_sqla_tests", broker="memory://", backend="cache+memory://", set_as_current=False
)
celery_app.conf.worker_hijack_root_logger = False  # leave pytest's log capture alone
celery_app.conf.broker_transport_options = {"polling_interval": 0.01}

jobs_db: scoped_session[Session] = scoped_session(sessionmaker())


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = jobs_db
    metadata = MetaData()


class Job(Base):
    __tablename__ = "wsgi_sqla_celery_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)


class DbTask(SessionTask[..., Any]):
    sessions = (jobs_db,)


def committed_jobs() -> list[str]:
    """Job names committed so far, read through a connection of its own."""
    with jobs_db.session_factory.kw["bind"].connect() as connection:
        return [row[0] for row in connection.execute(text(f"SELECT name FROM {Job.__tablename__}"))]


hook_calls: list[tuple[str, list[str]]] = []


def record_hook(name: str) -> None:
    hook_calls.append((name, sorted(committed_jobs())))


@celery_app.task(base=DbTask)
def add_job(name: str) -> str:
    Job(name=name).save()
    return name


@celery_app.task(base=DbTask)
def add_job_then_fail(name: str) -> None:
    Job(name=name).save()
    raise Boom(f"failed after adding {name}")


@celery_app.task(base=DbTask, bind=True, max_retries=1)
def add_job_retrying_once(self: Any, name: str) -> str:
    Job(name=f"{name} attempt {self.request.retries}").save()
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return name


@celery_app.task(
    base=DbTask, bind=True, autoretry_for=(Boom,), max_retries=1, default_retry_delay=0
)
def add_job_autoretried_once(self: Any, name: str) -> str:
    Job(name=f"{name} attempt {self.request.retries}").save()
    if self.request.retries == 0:
        raise Boom("first attempt fails")
    return name


@celery_app.task(base=DbTask)
def add_job_with_hook(name: str) -> None:
    Job(name=name).save()
    after_commit(record_hook, name)


@celery_app.task(base=DbTask)
def add_job_with_hook_then_fail(name: str) -> None:
    Job(name=name).save()
    after_commit(record_hook, name)
    raise Boom("after registering a hook")


@celery_app.task(base=DbTask)
def add_job_swallowing_a_duplicate(name: str) -> str:
    jobs_db.execute(insert(Job).values(name=name))
    try:  # noqa: SIM105 - spelled as the tasks this guards against are
        jobs_db.execute(insert(Job).values(name=name))
    except IntegrityError:
        pass
    return name


@celery_app.task(base=DbTask)
def add_job_undoing_a_duplicate_in_a_savepoint(name: str) -> str:
    jobs_db.execute(insert(Job).values(name=name))
    try:
        with jobs_db.begin_nested():
            jobs_db.execute(insert(Job).values(name=name))
    except IntegrityError:
        pass
    return name


@celery_app.task(base=SessionTask)
def unconfigured() -> str:
    return "ran without a unit of work"


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    """One in-process worker for the module, consuming the in-memory broker."""
    with start_worker(celery_app, perform_ping_check=False, shutdown_timeout=30):
        yield


@pytest.fixture
def jobs(engine: Engine, worker: None) -> Iterator[None]:
    """The jobs table on the database under test, and ``jobs_db`` bound to it."""
    jobs_db.configure(bind=engine)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    hook_calls.clear()
    yield
    jobs_db.remove()
    Base.metadata.drop_all(engine)
    jobs_db.configure(bind=None)


@pytest.fixture
def left_in_worker_registry() -> Iterator[list[bool]]:
    """After each task the worker ran: was a session still in its thread's registry?"""
    seen: list[bool] = []

    def postrun(**_: Any) -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen.append(jobs_db.registry.has())

    task_postrun.connect(postrun, weak=False)
    yield seen
    task_postrun.disconnect(postrun)


# -- what a task does with its unit of work -------------------------------------


def test_worker_task_commits_when_it_returns(jobs: None, probe: Any) -> None:
    assert add_job.delay("a").get(timeout=30, interval=0.01) == "a"

    assert committed_jobs() == ["a"]


def test_worker_task_that_raises_leaves_nothing_behind(jobs: None, probe: Any) -> None:
    result = add_job_then_fail.delay("a")

    with pytest.raises(Boom, match="failed after adding a"):
        result.get(timeout=30, interval=0.01)
    assert committed_jobs() == []
    assert probe.checked_out() == 0


def test_retry_rolls_back_the_attempt_that_asked_for_it(jobs: None) -> None:
    assert add_job_retrying_once.delay("a").get(timeout=30, interval=0.01) == "a"

    assert committed_jobs() == ["a attempt 1"]


def test_autoretry_rolls_back_the_attempt_that_failed(jobs: None) -> None:
    assert add_job_autoretried_once.delay("a").get(timeout=30, interval=0.01) == "a"

    assert committed_jobs() == ["a attempt 1"]


def test_worker_removes_the_session_after_every_task(
    jobs: None, left_in_worker_registry: list[bool], probe: Any
) -> None:
    add_job.delay("a").get(timeout=30, interval=0.01)
    with pytest.raises(Boom):
        add_job_then_fail.delay("b").get(timeout=30, interval=0.01)
    # The worker stores a task's result before it sends task_postrun: wait for the signal.
    deadline = time.monotonic() + 30
    while len(left_in_worker_registry) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    # The result reaches the caller before the worker's task_postrun signal runs.
    deadline = time.monotonic() + 30
    while len(left_in_worker_registry) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert left_in_worker_registry == [False, False]
    assert probe.checked_out() == 0


# -- a statement the database rejected ------------------------------------------------


def test_worker_task_swallowing_an_integrity_error_fails_and_commits_nothing(jobs: None) -> None:
    result = add_job_swallowing_a_duplicate.delay("a")

    outcome = result.get(timeout=30, interval=0.01, propagate=False)
    assert result.state == "FAILURE", f"the task ended {result.state} with {outcome!r}"
    assert isinstance(outcome, wsgi_sqla.RejectedWorkError), repr(outcome)
    assert committed_jobs() == []


def test_worker_task_undoing_a_duplicate_in_a_savepoint_commits_its_first_row(
    jobs: None,
) -> None:
    assert add_job_undoing_a_duplicate_in_a_savepoint.delay("a").get(timeout=30) == "a"

    assert committed_jobs() == ["a"]


# -- after_commit in a task ------------------------------------------------------------


def test_hook_in_a_worker_task_runs_once_after_its_commit(jobs: None) -> None:
    add_job_with_hook.delay("a").get(timeout=30, interval=0.01)

    assert hook_calls == [("a", ["a"])]


def test_hook_in_a_worker_task_is_not_run_when_the_task_raises(jobs: None) -> None:
    with pytest.raises(Boom):
        add_job_with_hook_then_fail.delay("a").get(timeout=30, interval=0.01)

    assert hook_calls == []
    assert committed_jobs() == []


# -- called without a worker ------------------------------------------------------------


def test_task_called_directly_outside_a_unit_commits_and_cleans_up(jobs: None) -> None:
    assert add_job("a") == "a"

    assert committed_jobs() == ["a"]
    assert not jobs_db.registry.has()


def test_task_called_directly_inside_a_transaction_joins_it(jobs: None) -> None:
    with transaction(jobs_db):
        add_job("a")
        assert committed_jobs() == []
        assert jobs_db.registry.has()

    assert committed_jobs() == ["a"]


def test_task_cls_from_task_base_makes_every_task_a_unit_of_work(jobs: None) -> None:
    app = Celery("wsgi_sqla_task_cls", task_cls=task_base(jobs_db), set_as_current=False)

    @app.task(shared=False)
    def add(name: str) -> None:
        Job(name=name).save()

    @app.task(shared=False)
    def add_then_fail(name: str) -> None:
        Job(name=name).save()
        raise Boom

    add.apply(args=("a",)).get()
    with pytest.raises(Boom):
        add_then_fail.apply(args=("b",)).get()

    assert committed_jobs() == ["a"]


# -- bad configuration ----------------------------------------------------------------


def test_task_without_sessions_fails_in_the_worker_with_a_clear_error(jobs: None) -> None:
    result = unconfigured.delay()

    with pytest.raises(TypeError, match="no session was configured") as raised:
        result.get(timeout=30, interval=0.01)
    assert "sessions = (db,)" in str(raised.value)
    assert "test_celery.unconfigured" in str(raised.value)


def test_task_without_sessions_fails_when_called_directly() -> None:
    with pytest.raises(TypeError, match="no session was configured"):
        unconfigured()


def test_task_base_without_a_session_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"task_base\(\): needs at least one .*scoped_session"):
        task_base()


def test_task_base_with_a_plain_session_is_a_type_error(engine: Engine) -> None:
    with (
        Session(engine) as plain,
        pytest.raises(TypeError, match=r"must be a sqlalchemy\.orm\.scoped_session"),
    ):
        task_base(plain)  # type: ignore[arg-type]


def test_subclass_with_something_else_in_sessions_fails_when_defined() -> None:
    with pytest.raises(TypeError, match=r"Broken.sessions: session argument 0 must be"):

        class Broken(SessionTask):  # type: ignore[type-arg]
            sessions = ("db",)  # type: ignore[assignment]
