"""A unit whose database work was partly rejected never commits, on every database.

The view in each case saves "ann", then runs a statement the database
rejects (a second "ann" against the unique key), and goes on. Without the
rule, PostgreSQL silently loses "ann" behind a success, while SQLite and
MariaDB commit her: the same code means two things. With it, the request
answers 500 and ``transaction()`` raises, with nothing committed, on all
three. The undoing the application chose itself, a savepoint around the
statement that may fail or an explicit ``session.rollback()``, still commits
what comes after it.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import scoped_session
from support import Models, Probe, answering, serve

from wsgi_sqla import CommitInDoubtError, RejectedWorkError, Retry, SessionMiddleware, transaction
from wsgi_sqla.testing import isolated

Work = Callable[[Models, scoped_session[Any]], None]


def _core_insert(models: Models, session: scoped_session[Any], name: str) -> None:
    session.execute(insert(models.User).values(name=name))


def core_swallowed(models: Models, session: scoped_session[Any]) -> None:
    """``session.execute`` inserts, then a duplicate whose IntegrityError is swallowed."""
    _core_insert(models, session, "ann")
    try:  # noqa: SIM105 - the idiom as applications write it
        _core_insert(models, session, "ann")
    except IntegrityError:
        pass


def orm_swallowed(models: Models, session: scoped_session[Any]) -> None:
    """``save()`` then a duplicate ``save()`` whose IntegrityError is swallowed."""
    models.User(name="ann").save()
    try:  # noqa: SIM105 - the idiom as applications write it
        models.User(name="ann").save()
    except IntegrityError:
        pass


def core_savepoint(models: Models, session: scoped_session[Any]) -> None:
    """The duplicate runs in a savepoint; then more work."""
    _core_insert(models, session, "ann")
    try:
        with session.begin_nested():
            _core_insert(models, session, "ann")
    except IntegrityError:
        pass
    _core_insert(models, session, "bob")


def orm_savepoint(models: Models, session: scoped_session[Any]) -> None:
    """The duplicate is saved with ``save(savepoint=True)``; then more work."""
    models.User(name="ann").save()
    try:  # noqa: SIM105 - the idiom as applications write it
        models.User(name="ann").save(savepoint=True)
    except IntegrityError:
        pass
    models.User(name="bob").save()


def core_rollback(models: Models, session: scoped_session[Any]) -> None:
    """The duplicate's error is answered with ``session.rollback()``; then more work."""
    _core_insert(models, session, "ann")
    try:
        _core_insert(models, session, "ann")
    except IntegrityError:
        session.rollback()
    _core_insert(models, session, "bob")


def orm_rollback(models: Models, session: scoped_session[Any]) -> None:
    """The failed ``save()`` is answered with ``session.rollback()``; then more work."""
    models.User(name="ann").save()
    try:
        models.User(name="ann").save()
    except IntegrityError:
        session.rollback()
    models.User(name="bob").save()


def core_swallowed_then_committed(models: Models, session: scoped_session[Any]) -> None:
    """The swallowed error is followed by the application's own ``commit()``."""
    core_swallowed(models, session)
    session.commit()


REJECTED: list[Any] = [
    pytest.param(core_swallowed, id="core"),
    pytest.param(orm_swallowed, id="orm"),
    pytest.param(core_swallowed_then_committed, id="core-explicit-commit"),
]
#: (work, the names committed): the application undid the failure itself.
UNDONE: list[Any] = [
    pytest.param(core_savepoint, ["ann", "bob"], id="core-savepoint"),
    pytest.param(orm_savepoint, ["ann", "bob"], id="orm-savepoint"),
    pytest.param(core_rollback, ["bob"], id="core-rollback"),
    pytest.param(orm_rollback, ["bob"], id="orm-rollback"),
]


def run_request(models: Models, session: scoped_session[Any], work: Work) -> str:
    """The client's status for a request doing ``work`` and answering 201."""
    app = SessionMiddleware(answering("201 Created", lambda: work(models, session)), session)
    return serve(app, method="POST").client_status


@pytest.mark.parametrize("work", REJECTED)
def test_a_request_that_went_on_after_a_rejected_statement_answers_500_and_commits_nothing(
    models: Models, session: scoped_session[Any], probe: Probe, work: Work
) -> None:
    assert run_request(models, session, work).startswith("500")
    assert probe.names() == []


@pytest.mark.parametrize("work", REJECTED)
def test_a_transaction_block_that_went_on_after_a_rejected_statement_raises_and_commits_nothing(
    models: Models, session: scoped_session[Any], probe: Probe, work: Work
) -> None:
    with pytest.raises(RejectedWorkError) as raised, transaction(session):
        work(models, session)
    assert isinstance(raised.value.error, IntegrityError)
    assert probe.names() == []
    assert probe.checked_out() == 0


@pytest.mark.parametrize(("work", "committed"), UNDONE)
def test_a_request_that_undid_the_rejected_statement_itself_commits_the_rest(
    models: Models, session: scoped_session[Any], probe: Probe, work: Work, committed: list[str]
) -> None:
    assert run_request(models, session, work).startswith("201")
    assert probe.names() == committed


@pytest.mark.parametrize(("work", "committed"), UNDONE)
def test_a_transaction_block_that_undid_the_rejected_statement_itself_commits_the_rest(
    models: Models, session: scoped_session[Any], probe: Probe, work: Work, committed: list[str]
) -> None:
    with transaction(session):
        work(models, session)
    assert probe.names() == committed


def test_the_refusal_is_logged_once_naming_the_error_and_the_savepoint_idiom(
    models: Models,
    session: scoped_session[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="wsgi_sqla"):
        run_request(models, session, core_swallowed)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "IntegrityError" in message
    assert "session.begin_nested()" in message


def test_a_request_under_isolated_follows_the_same_rule(
    models: Models, session: scoped_session[Any], probe: Probe
) -> None:
    with isolated(session):
        assert run_request(models, session, core_swallowed).startswith("500")
        assert run_request(models, session, core_savepoint).startswith("201")
        assert models.User.query.count() == 2
        session.remove()
    assert probe.names() == []


def test_a_session_removed_by_someone_else_is_reported_not_committed(
    models: Models,
    session: scoped_session[Any],
    probe: Probe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def work() -> None:
        models.User(name="ann").save()
        session.remove()  # what a framework teardown does before the middleware decides

    app = SessionMiddleware(answering("200 OK", work), session)
    with caplog.at_level(logging.DEBUG, logger="wsgi_sqla"):
        serve(app, method="POST")
    messages = [r.getMessage() for r in caplog.records]
    assert any("removed by someone else" in m for m in messages if "session" in m), messages
    assert not any(m.startswith("committed") for m in messages), messages
    assert probe.names() == []


# -- PostgreSQL: the driver's own transaction status ------------------------------------------


def test_a_failed_statement_on_the_raw_driver_connection_is_seen_on_postgresql(
    models: Models, session: scoped_session[Any], probe: Probe, engine: Engine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL aborts the transaction; the others undo the statement only")

    def work(models: Models, session: scoped_session[Any]) -> None:
        _core_insert(models, session, "ann")
        cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:  # noqa: SIM105 - the idiom as applications write it
            cursor.execute("SELECT 1/0")
        except Exception:  # the driver's own error: no SQLAlchemy listener sees it
            pass

    assert run_request(models, session, work).startswith("500")
    assert probe.names() == []


# -- MariaDB: a deadlock rolls back the whole transaction ------------------------------------


def test_a_swallowed_deadlock_on_mariadb_answers_500_and_commits_nothing(
    models: Models, session: scoped_session[Any], probe: Probe, engine: Engine
) -> None:
    if engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("MariaDB rolls back the whole transaction on a deadlock")
    with engine.begin() as connection:
        connection.execute(
            insert(models.User), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]
        )
    rival = engine.connect()
    # The heavier transaction, so that InnoDB picks the view's as the deadlock victim.
    rival.execute(insert(models.User), [{"name": f"filler{i}"} for i in range(50)])
    rival.execute(text("UPDATE wsgi_sqla_users SET name = 'bob2' WHERE id = 2"))
    view_waiting = threading.Event()

    def close_the_cycle() -> None:
        view_waiting.wait(10)
        threading.Event().wait(0.5)  # let the view's UPDATE start waiting for bob
        rival.execute(text("UPDATE wsgi_sqla_users SET name = 'ann2' WHERE id = 1"))
        rival.rollback()

    def work(models: Models, session: scoped_session[Any]) -> None:
        _core_insert(models, session, "carl")
        session.execute(text("UPDATE wsgi_sqla_users SET name = 'ann1' WHERE id = 1"))
        view_waiting.set()
        try:
            session.execute(text("UPDATE wsgi_sqla_users SET name = 'bob1' WHERE id = 2"))
        except OperationalError as exc:
            assert exc.orig is not None and exc.orig.args[0] == 1213, exc  # the view the victim
        else:
            raise AssertionError("no deadlock: the test did not set up its cycle")
        _core_insert(models, session, "dave")  # in a new transaction the server began

    thread = threading.Thread(target=close_the_cycle)
    thread.start()
    try:
        assert run_request(models, session, work).startswith("500")
    finally:
        thread.join(20)
        rival.close()
    assert probe.names() == ["ann", "bob"]


@pytest.mark.parametrize("error_class", [RejectedWorkError, CommitInDoubtError])
def test_the_errors_survive_pickling_with_their_message(error_class: type[Exception]) -> None:
    """A Celery result backend and multiprocessing rebuild them from their args."""
    rebuilt = pickle.loads(pickle.dumps(error_class("nothing committed", ValueError("cause"))))
    assert type(rebuilt) is error_class
    assert str(rebuilt) == "nothing committed"


# -- retries: nothing was committed, so a transient first error may run the request again -----


@pytest.mark.parametrize(
    ("sqlstate", "runs"),
    [
        pytest.param("40001", 2, id="serialization-failure-is-retried"),
        pytest.param("23505", 1, id="unique-violation-is-not"),
    ],
)
def test_a_request_refused_for_a_transient_rejected_statement_may_run_again(
    models: Models,
    session: scoped_session[Any],
    probe: Probe,
    engine: Engine,
    sqlstate: str,
    runs: int,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("raises an error with a chosen SQLSTATE from PL/pgSQL")
    attempts: list[int] = []

    def work() -> None:
        attempts.append(1)
        _core_insert(models, session, f"ann-{len(attempts)}")
        if len(attempts) == 1:
            raising = f"DO $$ BEGIN RAISE EXCEPTION 'once' USING ERRCODE = '{sqlstate}'; END $$"
            try:  # noqa: SIM105 - the idiom as applications write it
                session.execute(text(raising))
            except Exception:
                pass

    app = SessionMiddleware(answering("201 Created", work), session, retry=Retry(1, backoff=0))
    status = serve(app, method="POST").client_status
    assert len(attempts) == runs
    assert status.startswith("201" if runs == 2 else "500")
    assert probe.names() == (["ann-2"] if runs == 2 else [])
