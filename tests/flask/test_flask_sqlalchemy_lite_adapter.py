"""wsgi_sqla.flask_sqlalchemy_lite.init_app: each request of a Flask-SQLAlchemy-Lite app a unit.

Flask-SQLAlchemy-Lite never commits; with the adapter, ``db.session`` and the
named sessions (``db.get_session(name)``) are committed when the request
succeeds. Real applications, the database read through ``probe``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import flask
import pytest
import sqlalchemy
from fsa_support import LiteModels, body_streaming, make_lite_app
from support import Probe, backend, in_child, serve

from wsgi_sqla.flask_sqlalchemy_lite import ExplicitCommitError

AppFactory = Callable[..., flask.Flask]


@pytest.mark.parametrize(
    ("query", "names"),
    [
        pytest.param("", ["ann"], id="201-commits"),
        pytest.param("?status=400", [], id="400-rolls-back"),
        pytest.param("?session=audit", ["ann"], id="named-session-commits"),
        pytest.param("?session=audit&status=400", [], id="named-session-rolls-back"),
    ],
)
def test_session_work_is_committed_only_when_the_request_succeeds(
    lite_app: flask.Flask, probe: Probe, query: str, names: list[str]
) -> None:
    lite_app.test_client().post(f"/users/ann{query}")
    assert probe.names() == names
    assert probe.checked_out() == 0


def test_the_default_and_a_named_session_are_committed_together(
    lite_app: flask.Flask, lite: LiteModels, probe: Probe, db_name: str
) -> None:
    if db_name == "sqlite":
        pytest.skip("SQLite lets one connection write a file at a time; two sessions write here")

    @lite_app.post("/both")
    def view() -> tuple[str, int]:
        lite.db.session.add(lite.User(name="ann"))
        lite.db.get_session("audit").add(lite.User(name="bob"))
        return "ok", 201

    lite_app.test_client().post("/both")
    assert probe.names() == ["ann", "bob"]


def test_an_app_context_ending_inside_the_request_leaves_the_session_to_the_unit(
    lite_app: flask.Flask, lite: LiteModels, probe: Probe
) -> None:
    @lite_app.post("/nested")
    def view() -> tuple[str, int]:
        lite.db.session.add(lite.User(name="ann"))
        with lite_app.app_context():
            pass
        return "ok", 201

    lite_app.test_client().post("/nested")
    assert probe.names() == ["ann"]


def test_work_done_while_a_plain_body_streams_is_committed_at_close(
    lite_app: flask.Flask, lite: LiteModels, probe: Probe
) -> None:
    @lite_app.get("/stream")
    def view() -> flask.Response:
        def rows() -> Iterator[str]:
            yield "first;"
            lite.db.session.add(lite.User(name="streamed"))  # no Flask context here
            yield "second;"

        return body_streaming(rows())

    assert serve(lite_app, path="/stream").body == b"first;second;"
    assert probe.names() == ["streamed"]


def test_outside_requests_db_session_is_flask_sqlalchemy_lites_own_and_never_commits(
    lite_app: flask.Flask, lite: LiteModels, probe: Probe
) -> None:
    with lite_app.app_context():
        lite.db.session.add(lite.User(name="ann"))
        lite.db.session.flush()
        assert lite.db.session is lite.db.get_session()
    assert probe.names() == [], "closed, not committed, when the app context ended"


def test_refuse_commits_makes_an_explicit_commit_an_error_naming_its_line(
    lite_factory: AppFactory, lite: LiteModels, probe: Probe
) -> None:
    app = lite_factory(refuse_commits=True, errors="propagate")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    line = 0

    @app.post("/manual")
    def view() -> str:
        nonlocal line
        lite.db.session.add(lite.User(name="ann"))
        line = sys._getframe().f_lineno + 1
        lite.db.session.commit()
        return "ok"

    with pytest.raises(ExplicitCommitError) as raised:
        app.test_client().post("/manual")
    assert f"{__file__}:{line}" in str(raised.value)
    assert probe.names() == []
    app.test_client().post("/users/bob")
    assert probe.names() == ["bob"], "the unit's own commit is not refused"


@pytest.mark.parametrize("order", ["db-first", "adapter-first"])
def test_both_orders_of_initialisation_work(
    lite_factory: AppFactory, probe: Probe, order: str
) -> None:
    lite_factory(order=order).test_client().post("/users/ann")
    assert probe.names() == ["ann"]


def test_two_apps_sharing_one_db_each_write_to_their_own_database(
    lite: LiteModels, tmp_path: Path
) -> None:
    apps = [make_lite_app(lite, f"sqlite:///{tmp_path / n}.sqlite3") for n in ("one", "two")]
    try:
        for app in apps:
            with app.app_context():
                lite.Base.metadata.create_all(lite.db.engine)
        apps[0].test_client().post("/users/ann")
        apps[1].test_client().post("/users/bob")
        for app, expected in zip(apps, (["ann"], ["bob"]), strict=True):
            with app.app_context():
                names = [u.name for u in lite.db.session.query(lite.User).all()]
                assert names == expected
    finally:
        for app in apps:
            with app.app_context():
                lite.db.engine.dispose()


def test_what_the_adapter_changes_on_db_it_changes_once(lite: LiteModels, tmp_path: Path) -> None:
    make_lite_app(lite, f"sqlite:///{tmp_path / 'one.sqlite3'}")
    get_session = lite.db.get_session
    make_lite_app(lite, f"sqlite:///{tmp_path / 'two.sqlite3'}")
    assert lite.db.get_session == get_session


def test_two_posts_without_closing_the_first_response_warn_nothing(
    lite_app: flask.Flask, probe: Probe
) -> None:
    client = lite_app.test_client()
    assert client.post("/users/ann").status_code == 201
    assert client.post("/users/bob").status_code == 201
    assert probe.names() == ["ann", "bob"]


def test_the_end_of_a_with_client_block_closes_what_a_named_session_reopened(
    lite_app: flask.Flask, lite: LiteModels
) -> None:
    @lite_app.post("/remember/<name>")
    def remember(name: str) -> tuple[str, int]:
        flask.g.user = lite.User(name=name)
        lite.db.get_session("audit").add(flask.g.user)
        return "ok", 201

    with lite_app.test_client() as client:
        client.post("/remember/ann")
        request_session = sqlalchemy.inspect(flask.g.user).session
        request_session.execute(sqlalchemy.text("SELECT 1"))  # the test reopens a transaction
    with lite_app.app_context():
        assert lite.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("order", ["db-first", "adapter-first"])
def test_the_apps_engines_are_made_fork_safe_in_either_init_order(
    lite: LiteModels, uri: str, order: str
) -> None:
    app = make_lite_app(lite, uri, order=order)  # type: ignore[arg-type]
    with app.app_context():
        engine = lite.db.engine
    try:
        parents = backend(engine)
        assert in_child(lambda: backend(engine)) != parents
    finally:
        engine.dispose()
