"""wsgi_sqla.flask_sqlalchemy.init_app: a Flask-SQLAlchemy application's requests as units of work.

Each test drives a real Flask application (Flask's test client, or the
in-process PEP 3333 server of tests/support.py) on SQLite, PostgreSQL and
MariaDB, and reads the database through a separate connection (``probe``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import flask.testing
import flask_sqlalchemy
import flask_sqlalchemy_lite
import pytest
from flask_sqlalchemy.track_modifications import models_committed
from fsa_support import FsaModels, InitOrder, body_streaming, make_app
from sqlalchemy.orm import scoped_session
from support import Probe, backend, ignore_response, in_child, make_engine, serve

import wsgi_sqla.flask_sqlalchemy
import wsgi_sqla.flask_sqlalchemy_lite
from wsgi_sqla import IdempotencyKeys, SessionMiddleware
from wsgi_sqla.flask_sqlalchemy import ExplicitCommitError

AppFactory = Callable[..., flask.Flask]


# -- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        pytest.param("", ["ann"], id="201-commits"),
        pytest.param("?status=400", [], id="400-rolls-back"),
        pytest.param("?raise=1", [], id="exception-rolls-back"),
    ],
)
def test_db_session_work_is_committed_only_when_the_request_succeeds(
    app: flask.Flask, probe: Probe, query: str, names: list[str]
) -> None:
    app.test_client().post(f"/users/ann{query}")
    assert probe.names() == names
    assert probe.checked_out() == 0


def test_the_commit_happens_before_the_status_reaches_the_server(
    app: flask.Flask, probe: Probe
) -> None:
    seen = serve(app, method="POST", path="/users/ann", on_start_response=probe.names)
    assert seen.at_status == ["ann"]


def test_an_explicit_commit_commits_early_and_the_decision_covers_the_rest(
    app: flask.Flask, probe: Probe
) -> None:
    app.test_client().post("/commit-then/ann?status=409")
    assert probe.names() == ["ann"], "the explicit commit stands, the rest is rolled back"


# -- teardown no longer removes the session early -------------------------------------------


def _nested_app_context(app: flask.Flask) -> None:
    with app.app_context():
        pass


def _nested_request_context(app: flask.Flask) -> None:
    with app.test_request_context("/"):
        pass


def _repushed_app_context(app: flask.Flask) -> None:
    context = flask.globals.app_ctx._get_current_object()  # type: ignore[attr-defined]
    context.push()
    context.pop()


@pytest.mark.parametrize(
    "nested",
    [_nested_app_context, _nested_request_context, _repushed_app_context],
    ids=["app_context", "test_request_context", "re-pushed-app-context"],
)
def test_an_app_context_ending_inside_the_request_leaves_the_session_to_the_unit(
    app: flask.Flask, fsa: FsaModels, probe: Probe, nested: Callable[[flask.Flask], None]
) -> None:
    @app.post("/nested")
    def view() -> tuple[str, int]:
        fsa.db.session.add(fsa.User(name="ann"))  # pending, not flushed
        nested(app)
        fsa.db.session.add(fsa.User(name="bob"))
        return "ok", 201

    assert app.test_client().post("/nested").status_code == 201
    assert probe.names() == ["ann", "bob"]


def test_work_done_while_a_plain_body_streams_is_committed_at_close(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    @app.get("/stream")
    def view() -> flask.Response:
        def rows() -> Iterator[str]:
            yield "first;"
            fsa.db.session.add(fsa.User(name="streamed"))  # no Flask context here
            yield "second;"

        return body_streaming(rows())

    seen = serve(app, path="/stream")
    assert seen.body == b"first;second;" and seen.error is None
    assert probe.names() == ["streamed"]
    assert probe.checked_out() == 0


def test_stream_with_context_keeps_the_session_of_the_unit(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    @app.get("/stream")
    def view() -> flask.Response:
        user = fsa.User(name="ann")
        fsa.db.session.add(user)
        fsa.db.session.flush()

        def rows() -> Iterator[str]:
            yield user.name
            fsa.db.session.add(fsa.User(name="streamed"))

        return body_streaming(flask.stream_with_context(rows()))

    assert serve(app, path="/stream").body == b"ann"
    assert probe.names() == ["ann", "streamed"]


def test_work_in_close_has_the_unit_session_and_is_committed(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    @app.get("/closing")
    def view() -> flask.Response:
        response = flask.Response("ok")

        def on_close() -> None:
            fsa.db.session.add(fsa.User(name="at-close"))
            fsa.db.session.flush()

        response.call_on_close(on_close)
        return response

    seen = serve(app, path="/closing")
    assert seen.error is None
    assert probe.names() == ["at-close"]


def test_the_servers_file_wrapper_is_handed_back_untouched(
    app: flask.Flask, fsa: FsaModels, probe: Probe, tmp_path: Path
) -> None:
    download = tmp_path / "download.bin"
    download.write_bytes(b"x" * 100)
    made: list[Any] = []

    def file_wrapper(filelike: Any, block_size: int = 8192) -> Any:
        made.append(filelike)  # uWSGI's wrapper returns the file object itself
        return filelike

    @app.get("/file")
    def view() -> flask.Response:
        fsa.db.session.add(fsa.User(name="ann"))
        return flask.send_file(download)

    environ = flask.testing.EnvironBuilder(app, "/file").get_environ()
    environ["wsgi.file_wrapper"] = file_wrapper
    body = app.wsgi_app(environ, ignore_response)
    body.close()  # type: ignore[attr-defined]
    assert made and body is made[0]
    assert probe.names() == ["ann"]


# -- Flask-SQLAlchemy keeps working ------------------------------------------------------


def test_model_query_paginate_and_get_or_404_use_the_unit_session(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    client = app.test_client()
    for name in ("ann", "bob", "cy"):
        client.post(f"/users/{name}")
    assert client.get("/users").text == "ann,bob;total=3"
    with app.app_context():
        ident = fsa.User.query.filter_by(name="bob").one().id
    assert client.get(f"/users/{ident}").text == "bob"
    assert client.get("/users/999999").status_code == 404


@pytest.mark.parametrize(
    ("status", "rows"), [pytest.param(201, 1, id="commits"), pytest.param(400, 0, id="rolls-back")]
)
def test_two_binds_are_committed_or_rolled_back_together(
    app_factory: AppFactory,
    fsa: FsaModels,
    probe: Probe,
    uri: str,
    tmp_path: Path,
    status: int,
    rows: int,
) -> None:
    # SQLite cannot hold two writing connections on one file: the bind gets a file of its own.
    notes_uri = f"sqlite:///{tmp_path / 'notes.sqlite3'}" if uri.startswith("sqlite") else uri
    app = app_factory(binds={"notes": notes_uri})
    notes = Probe(make_engine(notes_uri))

    @app.post("/both")
    def view() -> tuple[str, int]:
        fsa.db.session.add(fsa.User(name="ann"))
        fsa.db.session.add(fsa.Note(text="on the other bind"))
        return "ok", status

    app.test_client().post("/both")
    assert probe.count("wsgi_sqla_users") == rows
    assert notes.count("wsgi_sqla_notes") == rows
    notes.engine.dispose()


def test_model_change_signals_are_sent_for_the_commit_at_the_decision(
    app_factory: AppFactory, fsa: FsaModels
) -> None:
    app = app_factory(track_modifications=True)
    received: list[list[str]] = []

    def record(sender: flask.Flask, changes: list[tuple[Any, str]]) -> None:
        received.append([f"{operation}:{model.name}" for model, operation in changes])

    models_committed.connect(record, app)
    app.test_client().post("/users/ann")
    assert received == [["insert:ann"]]


def test_outside_requests_db_session_is_scoped_to_the_app_context_as_before(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    with app.app_context():
        first = fsa.db.session()
        assert fsa.db.session() is first
        fsa.db.session.add(fsa.User(name="ann"))
        fsa.db.session.commit()
        with app.app_context():
            assert fsa.db.session() is not first
    assert not fsa.db.session.registry.registry, "removed when its app context ended"
    assert probe.names() == ["ann"]


def test_the_app_context_session_of_a_test_is_left_alone_by_a_request(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    with app.app_context():
        fsa.db.session.add(fsa.User(name="set-up"))
        fsa.db.session.flush()
        app.test_client().post("/users/ann?status=400")
        fsa.db.session.commit()
    assert probe.names() == ["set-up"]


# -- refuse_commits -------------------------------------------------------------------------


def test_refuse_commits_makes_an_explicit_commit_an_error_naming_its_line(
    app_factory: AppFactory, fsa: FsaModels, probe: Probe
) -> None:
    app = app_factory(refuse_commits=True, errors="propagate")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    line = 0

    @app.post("/manual")
    def view() -> str:
        nonlocal line
        fsa.db.session.add(fsa.User(name="ann"))
        line = sys._getframe().f_lineno + 1
        fsa.db.session.commit()
        return "ok"

    with pytest.raises(ExplicitCommitError) as raised:
        app.test_client().post("/manual")
    assert f"{__file__}:{line}" in str(raised.value)
    assert probe.names() == []


def test_refuse_commits_leaves_commits_outside_requests_alone(
    app_factory: AppFactory, fsa: FsaModels, probe: Probe
) -> None:
    app = app_factory(refuse_commits=True)
    with app.app_context():
        fsa.db.session.add(fsa.User(name="from-a-cli-command"))
        fsa.db.session.commit()
    assert probe.names() == ["from-a-cli-command"]


# -- set-up: init orders, two applications, idempotence, misuse ------------------------------


@pytest.mark.parametrize("order", ["db-first", "adapter-first"])
def test_both_orders_of_initialisation_work(
    app_factory: AppFactory, fsa: FsaModels, probe: Probe, order: str
) -> None:
    app = app_factory(order=order)

    @app.post("/nested")
    def view() -> tuple[str, int]:
        fsa.db.session.add(fsa.User(name="ann"))
        _nested_app_context(app)
        return "ok", 201

    app.test_client().post("/nested")
    assert probe.names() == ["ann"]


def test_two_apps_sharing_one_db_each_write_to_their_own_database(
    fsa: FsaModels, tmp_path: Path
) -> None:
    uris = [f"sqlite:///{tmp_path / name}.sqlite3" for name in ("one", "two")]
    apps = [make_app(fsa, uri) for uri in uris]
    try:
        for app in apps:
            with app.app_context():
                fsa.db.create_all()
        apps[0].test_client().post("/users/ann")
        apps[1].test_client().post("/users/bob")
        for app, expected in zip(apps, (["ann"], ["bob"]), strict=True):
            with app.app_context():
                assert [u.name for u in fsa.User.query.all()] == expected
    finally:
        for app in apps:
            with app.app_context():
                for engine in fsa.db.engines.values():
                    engine.dispose()


def test_what_the_adapter_changes_on_db_it_changes_once(fsa: FsaModels, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    apps = [make_app(fsa, uri) for _ in range(3)]
    switch = fsa.db.session.registry
    commit = fsa.db.session.commit
    teardown = fsa.db._teardown_session
    make_app(fsa, uri)
    assert fsa.db.session.registry is switch
    assert fsa.db.session.commit is commit and fsa.db._teardown_session is teardown
    for app in apps:
        assert app.teardown_appcontext_funcs.count(teardown) == 1
        assert app.wsgi_app.app.wsgi_app.__self__ is app  # type: ignore[attr-defined]


@pytest.mark.parametrize("adopted", [False, True], ids=["before-init_app", "after-init_app"])
def test_session_middleware_given_db_session_directly_is_refused_naming_the_adapter(
    fsa: FsaModels, tmp_path: Path, adopted: bool
) -> None:
    app = flask.Flask(__name__)
    if adopted:
        make_app(fsa, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with pytest.raises(TypeError, match=r"wsgi_sqla\.flask_sqlalchemy\.init_app"):
        SessionMiddleware(app.wsgi_app, fsa.db.session)


def test_init_app_refuses_what_is_not_flask_and_flask_sqlalchemy(fsa: FsaModels) -> None:
    with pytest.raises(TypeError, match=r"flask\.Flask"):
        wsgi_sqla.flask_sqlalchemy.init_app(object(), fsa.db)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"flask_sqlalchemy\.SQLAlchemy"):
        wsgi_sqla.flask_sqlalchemy.init_app(flask.Flask(__name__), scoped_session)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("init_app", "db_type"),
    [
        (wsgi_sqla.flask_sqlalchemy.init_app, flask_sqlalchemy.SQLAlchemy),
        (wsgi_sqla.flask_sqlalchemy_lite.init_app, flask_sqlalchemy_lite.SQLAlchemy),
    ],
    ids=["flask_sqlalchemy", "flask_sqlalchemy_lite"],
)
def test_idempotency_keys_are_refused_by_the_adapters_naming_why(
    init_app: Callable[..., SessionMiddleware], db_type: type
) -> None:
    app = flask.Flask(__name__)
    named = rf"{re.escape(init_app.__module__)}\.init_app: idempotency="
    with pytest.raises(TypeError, match=named):
        init_app(app, db_type(), idempotency=IdempotencyKeys())
    assert app.wsgi_app.__class__ is not SessionMiddleware, "wrapped although refused"


# -- Flask's test client, as tests are usually written -----------------------------------------


def test_two_posts_without_closing_the_first_response_warn_nothing_and_keep_nothing(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    client = app.test_client()
    assert client.post("/users/ann").status_code == 201
    assert client.post("/users/bob").status_code == 201
    assert probe.names() == ["ann", "bob"]
    sessions_kept = fsa.db._wsgi_sqla_adopted[1].registry
    assert len(sessions_kept) <= 1, "the first request's session was closed by the second"


def test_the_end_of_a_with_client_block_closes_what_the_test_reopened_on_the_request_session(
    app: flask.Flask, fsa: FsaModels
) -> None:
    @app.post("/remember/<name>")
    def remember(name: str) -> tuple[str, int]:
        flask.g.user = fsa.User(name=name)
        fsa.db.session.add(flask.g.user)
        return "ok", 201

    with app.test_client() as client:
        client.post("/remember/ann")
        assert flask.g.user.name == "ann"  # expired by the commit: reloaded, in a transaction
    with app.app_context():
        assert fsa.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("db_name", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("order", ["db-first", "adapter-first"])
def test_the_apps_engines_are_made_fork_safe_in_either_init_order(
    fsa: FsaModels, uri: str, order: InitOrder
) -> None:
    app = make_app(fsa, uri, order=order)
    with app.app_context():
        engine = fsa.db.engine
    try:
        parents = backend(engine)
        assert in_child(lambda: backend(engine)) != parents
    finally:
        engine.dispose()
