"""transaction(): the request's unit of work for scripts, CLI commands and helpers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import webtest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import Boom

from wsgi_sqla import (
    SessionMiddleware,
    StaleSessionWarning,
    UnitOfWork,
    current_unit,
    force_rollback,
    transaction,
)

# -- as a context manager -------------------------------------------------


def test_block_commits_when_it_ends_normally(session: Any, models: Any, probe: Any) -> None:
    with transaction(session):
        models.User(name="ann").save()

    assert probe.names() == ["ann"]


def test_block_rolls_back_and_reraises_the_same_exception(
    session: Any, models: Any, probe: Any
) -> None:
    error = Boom("after writing")
    with pytest.raises(Boom) as raised, transaction(session):
        models.User(name="ann").save()
        raise error

    assert raised.value is error
    assert probe.names() == []


def test_block_rolls_back_on_base_exceptions_too(session: Any, models: Any, probe: Any) -> None:
    with pytest.raises(KeyboardInterrupt), transaction(session):
        models.User(name="ann").save()
        raise KeyboardInterrupt

    assert probe.names() == []


def test_sessions_are_removed_after_a_commit(session: Any, models: Any, probe: Any) -> None:
    with transaction(session):
        models.User(name="ann").save()
        assert session.registry.has()

    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_sessions_are_removed_after_a_rollback(session: Any, models: Any, probe: Any) -> None:
    with pytest.raises(Boom), transaction(session):
        models.User(name="ann").save()
        raise Boom

    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_force_rollback_in_a_block_rolls_back_without_an_exception(
    session: Any, models: Any, probe: Any
) -> None:
    with transaction(session):
        models.User(name="ann").save()
        force_rollback()

    assert probe.names() == []
    assert not session.registry.has()


def test_block_runs_as_the_current_unit_and_restores_none_after(session: Any, models: Any) -> None:
    with transaction(session) as unit:
        assert current_unit() is unit
        assert isinstance(unit, UnitOfWork)

    assert current_unit() is None


def test_block_that_never_uses_a_session_costs_nothing(
    session: Any, engine: Engine, probe: Any
) -> None:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *a: checkouts.append(a))

    with transaction(session):
        pass

    assert statements == []
    assert checkouts == []
    assert not session.registry.has()


def test_session_left_over_from_outside_is_discarded_not_committed(
    session: Any, models: Any, probe: Any
) -> None:
    models.User(name="written outside any unit").save()

    with pytest.warns(StaleSessionWarning), transaction(session):
        models.User(name="ann").save()

    assert probe.names() == ["ann"]


def test_two_sessions_commit_together(
    engine: Engine, session: Any, models: Any, probe: Any, tmp_path: Path
) -> None:
    # SQLite allows one writer per file: there the second session gets a file of its own.
    other_engine = engine
    if engine.dialect.name == "sqlite":
        other_engine = create_engine(f"sqlite:///{tmp_path / 'other.sqlite3'}")
        models.Base.metadata.create_all(other_engine)
    other = scoped_session(sessionmaker(bind=other_engine))
    try:
        with transaction(session, other):
            models.User(name="ann").save()
            other.add(models.User(name="bob"))

        if other_engine is engine:
            assert probe.names() == ["ann", "bob"]
        else:
            assert probe.names() == ["ann"]
            assert type(probe)(other_engine).names() == ["bob"]
        assert not session.registry.has()
        assert not other.registry.has()
    finally:
        other.remove()
        if other_engine is not engine:
            other_engine.dispose()


def test_one_object_cannot_run_two_blocks_at_once(session: Any, models: Any, probe: Any) -> None:
    block = transaction(session)
    with block, pytest.raises(RuntimeError, match="already running a block"), block:
        pass


def test_exit_without_enter_says_how_to_write_the_block(session: Any) -> None:
    with pytest.raises(RuntimeError, match=r"never entered; write `with transaction\(db\):`"):
        transaction(session).__exit__(None, None, None)


def test_one_object_can_run_blocks_one_after_the_other(
    session: Any, models: Any, probe: Any
) -> None:
    block = transaction(session)
    with block:
        models.User(name="ann").save()
    with block:
        models.User(name="bob").save()

    assert probe.names() == ["ann", "bob"]


# -- as a decorator -------------------------------------------------------


def test_decorated_function_commits_each_call_and_returns_its_value(
    session: Any, models: Any, probe: Any
) -> None:
    @transaction(session)
    def add(name: str) -> str:
        models.User(name=name).save()
        return name.upper()

    assert add("ann") == "ANN"
    assert probe.names() == ["ann"]
    assert add("bob") == "BOB"
    assert probe.names() == ["ann", "bob"]
    assert not session.registry.has()


def test_decorated_function_rolls_back_when_it_raises(
    session: Any, models: Any, probe: Any
) -> None:
    @transaction(session)
    def add_then_fail(name: str) -> None:
        models.User(name=name).save()
        raise Boom

    with pytest.raises(Boom):
        add_then_fail("ann")

    assert probe.names() == []
    assert not session.registry.has()


def test_decorator_keeps_the_function_name_and_docstring(session: Any) -> None:
    @transaction(session)
    def import_users() -> None:
        """Import them."""

    assert import_users.__name__ == "import_users"
    assert import_users.__doc__ == "Import them."


def test_decorator_refuses_coroutine_functions(session: Any) -> None:
    async def later() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine or generator function"):
        transaction(session)(later)


def test_decorator_refuses_generator_functions(session: Any) -> None:
    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="coroutine or generator function"):
        transaction(session)(rows)


# -- nesting: join the running unit ------------------------------------------


def test_nested_transaction_does_not_commit_early(session: Any, models: Any, probe: Any) -> None:
    with transaction(session) as outer:
        with transaction(session) as inner:
            models.User(name="ann").save()
        assert inner is outer
        assert probe.names() == []
        assert session.registry.has()

    assert probe.names() == ["ann"]


def test_nested_block_that_raises_and_is_not_caught_rolls_back_everything(
    session: Any, models: Any, probe: Any
) -> None:
    with pytest.raises(Boom), transaction(session):
        models.User(name="ann").save()
        with transaction(session):
            models.User(name="bob").save()
            raise Boom

    assert probe.names() == []


def test_nested_block_that_raises_leaves_the_outer_rules_in_charge(
    session: Any, models: Any, probe: Any
) -> None:
    # A joined block is not a savepoint: when the caller catches the error
    # and carries on, the outer unit commits what was flushed, as it would
    # for any other caught exception.
    with transaction(session):
        models.User(name="ann").save()
        with pytest.raises(Boom), transaction(session):
            models.User(name="bob").save()
            raise Boom

    assert probe.names() == ["ann", "bob"]


def test_nested_block_adds_its_sessions_to_the_outer_unit(
    engine: Engine, session: Any, models: Any, probe: Any
) -> None:
    other = scoped_session(sessionmaker(bind=engine))
    try:
        with transaction(session) as outer:
            with transaction(other):
                other.add(models.User(name="bob"))
            assert other in outer.sessions
            assert probe.names() == []

        assert probe.names() == ["bob"]
        assert not other.registry.has()
    finally:
        other.remove()


def test_decorated_helper_called_from_a_view_commits_with_the_request(
    session: Any, models: Any, probe: Any
) -> None:
    seen_inside: list[list[str]] = []

    @transaction(session)
    def add(name: str) -> None:
        models.User(name=name).save()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        add("ann")
        seen_inside.append(probe.names())
        start_response("200 OK", [])
        return [b"ok"]

    webtest.TestApp(SessionMiddleware(app, session)).get("/")

    assert seen_inside == [[]]
    assert probe.names() == ["ann"]


def test_decorated_helper_called_from_a_view_is_rolled_back_with_a_4xx(
    session: Any, models: Any, probe: Any
) -> None:
    @transaction(session)
    def add(name: str) -> None:
        models.User(name=name).save()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        add("ann")
        start_response("400 Bad Request", [])
        return [b"no"]

    webtest.TestApp(SessionMiddleware(app, session)).get("/", status=400)

    assert probe.names() == []


# -- bad input --------------------------------------------------------------


def test_no_session_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"transaction\(\): needs at least one .*scoped_session"):
        transaction()


def test_plain_session_is_a_type_error_naming_scoped_session(engine: Engine) -> None:
    with Session(engine) as plain, pytest.raises(TypeError) as raised:
        transaction(plain)  # type: ignore[arg-type]

    message = str(raised.value)
    assert "transaction()" in message
    assert "sqlalchemy.orm.scoped_session" in message
    assert "sqlalchemy.orm.session.Session" in message


# -- the Flask CLI example ----------------------------------------------------


@pytest.fixture
def flask_example(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples.flask_app, imported afresh against the database under test."""
    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    for name in ("examples.models", "examples.flask_app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("examples.flask_app")
    models = sys.modules["examples.models"]
    yield module
    models.db.remove()
    models.Base.metadata.drop_all(models.engine)
    models.engine.dispose()
    for name in ("examples.models", "examples.flask_app"):
        sys.modules.pop(name, None)


def test_cli_command_adds_all_users_in_one_transaction(
    flask_example: ModuleType, probe: Any
) -> None:
    result = flask_example.app.test_cli_runner().invoke(args=["add-users", "ann", "bob"])

    assert result.exit_code == 0, result.output
    assert "added 2 user(s)" in result.output
    with probe.engine.connect() as connection:
        names = connection.exec_driver_sql("SELECT name FROM example_users ORDER BY name")
        assert [row[0] for row in names] == ["ann", "bob"]


def test_cli_command_adds_nothing_when_one_name_is_taken(
    flask_example: ModuleType, probe: Any
) -> None:
    runner = flask_example.app.test_cli_runner()
    assert runner.invoke(args=["add-users", "ann"]).exit_code == 0

    result = runner.invoke(args=["add-users", "bob", "ann", "cid"])

    assert result.exit_code == 1
    assert "'ann' exists; nothing was added" in result.output
    assert probe.count("example_users") == 1
