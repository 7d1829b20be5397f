"""wsgi_sqla.flask_sqlalchemy.isolated(app, db): a Flask-SQLAlchemy app's tests leave nothing.

Written as Flask users write tests: the test client, two posts, no ``with``
block, no ``buffered=True``, and pyproject's ``filterwarnings = error``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import flask
import pytest
from fsa_support import FsaModels
from sqlalchemy import text
from support import Probe

from wsgi_sqla import isolated as generic_isolated
from wsgi_sqla.flask_sqlalchemy import isolated
from wsgi_sqla.testing import Isolation


@pytest.fixture
def wsgi_sqla_db(app: flask.Flask, fsa: FsaModels) -> Iterator[Isolation]:
    """The pytest plugin's fixture, overridden as the adapter's documentation shows."""
    with isolated(app, fsa.db) as isolation:
        yield isolation


@pytest.fixture
def names(app: flask.Flask, fsa: FsaModels) -> Callable[[Isolation], list[str]]:
    """The user names, read through the isolated connection of the app's default engine."""
    with app.app_context():
        default = fsa.db.engine  # the "notes" bind has an engine (and a connection) of its own

    def read(isolation: Isolation) -> list[str]:
        connection = isolation.connections[default]
        rows = connection.execute(text("SELECT name FROM wsgi_sqla_users ORDER BY name"))
        return [row[0] for row in rows]

    return read


def test_requests_commit_into_the_isolated_transaction_and_leave_nothing(
    app: flask.Flask, fsa: FsaModels, probe: Probe, names: Callable[[Isolation], list[str]]
) -> None:
    with isolated(app, fsa.db) as isolation:
        client = app.test_client()
        assert client.post("/users/ann").status_code == 201
        assert client.post("/users/bob").status_code == 201
        assert client.post("/users/cy?status=400").status_code == 400
        assert names(isolation) == ["ann", "bob"]
    assert probe.names() == []
    assert probe.checked_out() == 0


def test_set_up_data_committed_in_an_app_context_is_seen_by_requests_and_undone(
    app: flask.Flask, fsa: FsaModels, probe: Probe
) -> None:
    with isolated(app, fsa.db):
        with app.app_context():
            fsa.db.session.add(fsa.User(name="set-up"))
            fsa.db.session.commit()
        assert app.test_client().get("/users").text == "set-up;total=1"
    assert probe.names() == []


def test_the_plugin_fixture_overridden_as_documented_isolates_the_test(
    names: Callable[[Isolation], list[str]], wsgi_sqla_db: Isolation, app: flask.Flask, probe: Probe
) -> None:
    app.test_client().post("/users/ann")
    assert names(wsgi_sqla_db) == ["ann"]
    assert probe.names() == [], "only inside the outer transaction"


def test_isolated_before_db_init_app_is_a_clear_error(fsa: FsaModels) -> None:
    with (
        pytest.raises(RuntimeError, match=r"db\.init_app\(app\) first"),
        isolated(flask.Flask(__name__), fsa.db),
    ):
        pass


def test_the_generic_isolated_given_db_session_names_the_flask_one(fsa: FsaModels) -> None:
    named = r"wsgi_sqla\.flask_sqlalchemy\.isolated\(app, db\)"
    with pytest.raises(TypeError, match=named), generic_isolated(fsa.db.session):
        pass
