"""isolated() and reset_schema(): tests that leave nothing behind.

isolated() binds the scoped sessions to one connection per engine inside an
outer transaction, with savepoint joining: the middleware and transaction()
commit as usual, which releases savepoints, and the block's end rolls the
outer transaction back. Checked through a separate connection (``probe``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import webob
import webob.dec
import webtest
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import Boom

from wsgi_sqla import (
    SessionMiddleware,
    StaleSessionWarning,
    after_commit,
    isolated,
    reset_schema,
    transaction,
)


def users_app(session: Any, models: Any) -> webtest.TestApp:
    """POST /?name=… adds a user (201, or 409 when taken); GET / lists the names."""

    @webob.dec.wsgify
    def app(request: webob.Request) -> webob.Response:
        if request.method == "POST":
            try:
                models.User(name=request.params["name"]).save()
            except IntegrityError:
                return webob.Response("taken", status=409)
            return webob.Response("added", status=201)
        names = session.scalars(select(models.User.name).order_by(models.User.name))
        return webob.Response(",".join(names))

    return webtest.TestApp(SessionMiddleware(app, session))


# -- what the code under test sees -------------------------------------------------


def test_requests_commit_into_savepoints_and_a_rolled_back_one_undoes_only_its_own(
    session: Any, models: Any
) -> None:
    client = users_app(session, models)

    with isolated(session):
        client.post("/?name=ann", status=201)
        client.post("/?name=ann", status=409)
        client.post("/?name=bob", status=201)

        assert client.get("/").text == "ann,bob"


def test_transaction_blocks_commit_into_savepoints(session: Any, models: Any) -> None:
    client = users_app(session, models)

    with isolated(session):
        with transaction(session):
            models.User(name="ann").save()
        with pytest.raises(Boom), transaction(session):
            models.User(name="bob").save()
            raise Boom

        assert client.get("/").text == "ann"


def test_after_commit_hooks_run_once_the_savepoint_is_released(session: Any, models: Any) -> None:
    seen: list[int | None] = []

    with isolated(session) as isolation, transaction(session):
        models.User(name="ann").save()
        after_commit(
            lambda: seen.append(
                isolation.connection.scalar(select(func.count()).select_from(models.User))
            )
        )

    assert seen == [1]


def test_the_isolated_connection_reads_what_the_block_wrote(session: Any, models: Any) -> None:
    client = users_app(session, models)

    with isolated(session) as isolation:
        client.post("/?name=ann", status=201)

        names = isolation.connection.scalars(select(models.User.name)).all()
        assert names == ["ann"]
        assert not session.registry.has()


# -- what stays in the database -----------------------------------------------------


def test_nothing_written_in_the_block_remains_after_it(
    session: Any, models: Any, probe: Any
) -> None:
    client = users_app(session, models)

    with isolated(session):
        client.post("/?name=ann", status=201)
        with transaction(session):
            models.User(name="bob").save()

    assert probe.names() == []
    assert probe.checked_out() == 0


def test_commits_in_the_block_are_invisible_to_other_connections(
    session: Any, models: Any, probe: Any
) -> None:
    client = users_app(session, models)

    with isolated(session):
        client.post("/?name=ann", status=201)

        assert probe.names() == []


def test_a_block_that_raises_still_leaves_nothing(session: Any, models: Any, probe: Any) -> None:
    client = users_app(session, models)

    with pytest.raises(Boom), isolated(session):
        client.post("/?name=ann", status=201)
        raise Boom

    assert probe.names() == []
    assert probe.checked_out() == 0


def test_connections_behave_normally_after_the_block(
    session: Any, models: Any, engine: Engine, probe: Any
) -> None:
    # On SQLite the block switches the driver's own BEGIN off for its
    # connection; the pool must get the connection back as it was, or a later
    # rollback would not undo anything.
    with isolated(session):
        users_app(session, models).post("/?name=ann", status=201)

    with engine.connect() as connection:
        connection.execute(insert(models.User.__table__).values(name="bob"))
        connection.rollback()

    assert probe.names() == []


# -- the sessions' configuration --------------------------------------------------------


def test_the_sessionmaker_configuration_is_restored(engine: Engine, session: Any) -> None:
    before = dict(session.session_factory.kw)

    with isolated(session) as isolation:
        assert session.session_factory.kw["bind"] is isolation.connection
        assert session.session_factory.kw["join_transaction_mode"] == "create_savepoint"

    assert session.session_factory.kw == before
    assert session().get_bind() is engine


def test_a_session_the_block_leaves_in_the_registry_is_removed(
    session: Any, models: Any, probe: Any
) -> None:
    with isolated(session):
        session.scalars(select(models.User)).all()
        assert session.registry.has()

    assert not session.registry.has()
    assert probe.checked_out() == 0


def test_a_session_left_from_before_is_discarded_with_a_warning(
    session: Any, models: Any, probe: Any
) -> None:
    models.User(name="written outside any unit").save()

    with pytest.warns(StaleSessionWarning), isolated(session):
        pass

    assert probe.names() == []


def test_two_sessions_on_one_engine_are_refused_before_anything_is_bound(
    engine: Engine, session: Any
) -> None:
    other = scoped_session(sessionmaker(bind=engine))
    before = dict(session.session_factory.kw)

    with (
        pytest.raises(ValueError, match="session arguments 0 and 1 are bound to the same engine"),
        isolated(session, other),
    ):
        pass

    assert session.session_factory.kw == before
    assert other.session_factory.kw == before


def test_sessions_on_two_engines_get_a_connection_each(
    engine: Engine, session: Any, models: Any, probe: Any, tmp_path: Path
) -> None:
    other_engine = create_engine(f"sqlite:///{tmp_path / 'other.sqlite3'}")
    models.Base.metadata.create_all(other_engine)
    other = scoped_session(sessionmaker(bind=other_engine))
    try:
        with isolated(session, other) as isolation:
            with transaction(session, other):
                models.User(name="ann").save()
                other.add(models.User(name="bob"))
            assert set(isolation.connections) == {engine, other_engine}
            with pytest.raises(RuntimeError, match="pick one"):
                isolation.connection  # noqa: B018

        assert probe.names() == []
        assert type(probe)(other_engine).names() == []
    finally:
        other.remove()
        other_engine.dispose()


# -- bad input --------------------------------------------------------------------


def test_no_session_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"isolated\(\): needs at least one"), isolated():
        pass


def test_a_plain_session_is_a_type_error(engine: Engine) -> None:
    with (
        Session(engine) as plain,
        pytest.raises(TypeError, match=r"must be a sqlalchemy\.orm\.scoped_session"),
        isolated(plain),  # type: ignore[arg-type]
    ):
        pass


def test_an_unbound_sessionmaker_is_a_type_error_saying_how_to_bind_it() -> None:
    unbound = scoped_session(sessionmaker())

    with (
        pytest.raises(TypeError, match=r"must be bound to an Engine, got bind=None"),
        isolated(unbound),
    ):
        pass


# -- reset_schema -----------------------------------------------------------------------


def test_reset_schema_empties_every_table(
    session: Any, models: Any, engine: Engine, probe: Any
) -> None:
    with transaction(session):
        ann = models.User(name="ann").save()
        models.Post(title="hello", author=ann).save()

    reset_schema(models.Base.metadata, engine)

    assert probe.count("wsgi_sqla_users") == 0
    assert probe.count("wsgi_sqla_posts") == 0


def test_reset_schema_creates_missing_tables(models: Any, engine: Engine, probe: Any) -> None:
    models.Post.__table__.drop(engine)

    reset_schema(models.Base.metadata, engine)

    assert probe.count("wsgi_sqla_posts") == 0


def test_reset_schema_leaves_other_tables_alone(models: Any, engine: Engine, probe: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE wsgi_sqla_unrelated (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO wsgi_sqla_unrelated (id) VALUES (1)"))
    try:
        reset_schema(models.Base.metadata, engine)

        assert probe.count("wsgi_sqla_unrelated") == 1
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE wsgi_sqla_unrelated"))


def test_reset_schema_on_a_connection_runs_in_its_transaction(
    session: Any, models: Any, engine: Engine, probe: Any
) -> None:
    with transaction(session):
        models.User(name="ann").save()

    with engine.begin() as connection:
        reset_schema(models.Base.metadata, connection)
        assert connection.scalar(select(func.count()).select_from(models.User)) == 0

    assert probe.count("wsgi_sqla_users") == 0


def flask_users_app(session: Any, models: Any) -> Any:
    """A Flask application whose ``POST /<name>`` saves a user, under the middleware."""
    import flask

    app = flask.Flask(__name__)

    @app.post("/<name>")
    def add(name: str) -> tuple[str, int]:
        models.User(name=name).save()
        return "added", 201

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    return app


def test_two_test_client_posts_without_closing_warn_nothing_inside_isolated(
    session: Any, models: Any
) -> None:
    # pyproject's filterwarnings=error turns a StaleSessionWarning into a failure here.
    client = flask_users_app(session, models).test_client()
    with isolated(session) as isolation:
        assert client.post("/ann").status_code == 201
        assert client.post("/bob").status_code == 201
        names = isolation.connection.execute(text("SELECT name FROM wsgi_sqla_users"))
        assert sorted(row[0] for row in names) == ["ann", "bob"]


def test_a_leftover_holding_pending_changes_still_warns_inside_isolated(
    session: Any, models: Any
) -> None:
    client = flask_users_app(session, models).test_client()
    with isolated(session):
        session.add(models.User(name="pending"))
        with pytest.warns(StaleSessionWarning):
            client.post("/ann")


def test_outside_isolated_an_unclosed_test_client_response_still_warns(
    session: Any, models: Any
) -> None:
    client = flask_users_app(session, models).test_client()
    client.post("/ann")
    with pytest.warns(StaleSessionWarning):
        client.post("/bob")
