"""The pytest plugin: run a user's test suite with pytester, then look at the database.

Each test writes a small suite the way a user would (an app wrapped by
SessionMiddleware, a conftest.py that overrides ``wsgi_sqla_sessions``, tests
that use ``wsgi_sqla_db`` and WebTest), runs it with pytest, and checks the
outcome and, through a separate connection, what the suite left behind.
Nothing registers the plugin but its ``pytest11`` entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from sqlalchemy import Engine

pytest_plugins = ["pytester"]

# The user's application, as a module of the suite.
APP = """
import os

import webob
import webob.dec
from sqlalchemy import String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from wsgi_sqla import ActiveRecordMixin

engine = create_engine(os.environ["WSGI_SQLA_PLUGIN_TEST_URL"])
db = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class User(Base):
    __tablename__ = "wsgi_sqla_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)


@webob.dec.wsgify
def users(request):
    if request.method == "POST":
        try:
            User(name=request.params["name"]).save()
        except IntegrityError:
            return webob.Response("taken", status=409)
        return webob.Response("added", status=201)
    return webob.Response(",".join(db.scalars(select(User.name).order_by(User.name))))
"""

CONFTEST = """
import pytest
import webtest
from users_app import db, engine, users

from wsgi_sqla import SessionMiddleware


@pytest.fixture(scope="session", autouse=True)
def close_the_connections():
    yield
    engine.dispose()


@pytest.fixture
def client():
    return webtest.TestApp(SessionMiddleware(users, db))
"""

OVERRIDE = """

@pytest.fixture
def wsgi_sqla_sessions():
    return db
"""

# The suites must not trigger SQLAlchemy warnings nor discard stale sessions.
STRICT = ("-W", "error::sqlalchemy.exc.SAWarning", "-W", "error::wsgi_sqla.StaleSessionWarning")


@pytest.fixture
def suite(
    pytester: pytest.Pytester, engine: Engine, models: Any, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A pytester directory whose conftest.py configures the plugin for the database under test."""
    monkeypatch.setenv(
        "WSGI_SQLA_PLUGIN_TEST_URL", engine.url.render_as_string(hide_password=False)
    )
    pytester.makepyfile(users_app=APP)
    pytester.makeconftest(CONFTEST + OVERRIDE)
    return pytester


def test_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    (plugin,) = [ep for ep in entry_points(group="pytest11") if ep.name == "wsgi_sqla"]

    assert plugin.value == "wsgi_sqla.pytest_plugin"


# Usefixtures through the ini file, as the README suggests: every test of the project isolated.
ISOLATE_ALL = """
[pytest]
usefixtures = wsgi_sqla_db
"""


@pytest.mark.parametrize(
    ("tests", "ini", "outcomes"),
    [
        pytest.param(
            """
            def test_signup(client, wsgi_sqla_db):
                client.post("/?name=ann", status=201)
                client.post("/?name=bob", status=201)
                assert client.get("/").text == "ann,bob"
            """,
            None,
            {"passed": 1},
            id="requests-commit-for-the-test",
        ),
        pytest.param(
            """
            import pytest

            @pytest.mark.parametrize("run", [1, 2, 3])
            def test_the_same_user_each_time(client, run):
                client.post("/?name=ann", status=201)
                assert client.get("/").text == "ann"
            """,
            ISOLATE_ALL,
            {"passed": 3},
            id="each-test-starts-from-an-empty-database",
        ),
        pytest.param(
            """
            def test_duplicate(client, wsgi_sqla_db):
                client.post("/?name=ann", status=201)
                client.post("/?name=ann", status=409)
                client.post("/?name=bob", status=201)
                assert client.get("/").text == "ann,bob"
            """,
            None,
            {"passed": 1},
            id="a-rolled-back-request-keeps-what-earlier-ones-committed",
        ),
        pytest.param(
            """
            from sqlalchemy import func, select
            from users_app import User, db
            from wsgi_sqla import transaction

            def test_listing(client, wsgi_sqla_db):
                with transaction(db):
                    User(name="ann").save()

                assert client.get("/").text == "ann"
                count = select(func.count()).select_from(User)
                assert wsgi_sqla_db.connection.scalar(count) == 1
            """,
            None,
            {"passed": 1},
            id="set-up-data-in-a-transaction-block-is-seen-by-requests",
        ),
        pytest.param(
            """
            def test_fails_after_writing(client, wsgi_sqla_db):
                client.post("/?name=ann", status=201)
                assert False, "fails on purpose"
            """,
            None,
            {"failed": 1},
            id="a-failing-test",
        ),
    ],
)
def test_user_suite_behaves_as_written_and_leaves_nothing_behind(
    suite: pytest.Pytester, probe: Any, tests: str, ini: str | None, outcomes: dict[str, int]
) -> None:
    if ini is not None:
        suite.makeini(ini)
    suite.makepyfile(tests)

    suite.runpytest(*STRICT).assert_outcomes(**outcomes)

    assert probe.names() == []
    assert probe.checked_out() == 0


def test_without_the_sessions_fixture_the_error_says_how_to_configure_it(
    pytester: pytest.Pytester, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_SQLA_PLUGIN_TEST_URL", f"sqlite:///{tmp_path / 'unused.sqlite3'}")
    pytester.makepyfile(users_app=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        def test_signup(client, wsgi_sqla_db):
            pass
        """
    )

    # A separate interpreter: the plugin comes from the installed entry point alone.
    result = pytester.runpytest_subprocess()

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*define a fixture named wsgi_sqla_sessions in your conftest.py*", "*return myapp.db*"]
    )
