"""after_commit(): run code once the data is really there, never after a rollback.

In requests (through SessionMiddleware), in transaction() blocks, and in the
example that enqueues a Celery task from a view. Celery tasks that register
hooks themselves are covered in test_celery.py, next to their worker.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import webtest
from celery.contrib.testing.worker import start_worker
from celery.signals import after_task_publish, before_task_publish
from sqlalchemy import Engine, event, text
from support import Boom

from wsgi_sqla import (
    SessionMiddleware,
    after_commit,
    current_unit,
    force_rollback,
    transaction,
)

App = Callable[[Any, Any], list[bytes]]


def wsgi(session: Any, view: Callable[[], str]) -> webtest.TestApp:
    """A WSGI app whose view returns the status it picks, wrapped by the middleware."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response(view(), [("Content-Type", "text/plain")])
        return [b"done"]

    return webtest.TestApp(SessionMiddleware(app, session))


# -- in a request -------------------------------------------------------------


def test_hook_runs_once_after_the_request_committed(session: Any, models: Any, probe: Any) -> None:
    seen: list[list[str]] = []

    def view() -> str:
        models.User(name="ann").save()
        after_commit(lambda: seen.append(probe.names()))
        return "201 Created"

    wsgi(session, view).get("/", status=201)

    assert seen == [["ann"]]


def test_hook_is_not_run_when_the_request_rolls_back_on_4xx(
    session: Any, models: Any, probe: Any
) -> None:
    ran: list[str] = []

    def view() -> str:
        models.User(name="ann").save()
        after_commit(ran.append, "hook")
        return "409 Conflict"

    wsgi(session, view).get("/", status=409)

    assert ran == []
    assert probe.names() == []


def test_hook_is_not_run_when_the_view_raises(session: Any, models: Any, probe: Any) -> None:
    ran: list[str] = []

    def view() -> str:
        models.User(name="ann").save()
        after_commit(ran.append, "hook")
        raise Boom

    with pytest.raises(Boom):
        wsgi(session, view).get("/")

    assert ran == []


def test_hook_is_not_run_when_the_commit_fails(session: Any, models: Any, probe: Any) -> None:
    ran: list[str] = []

    def view() -> str:
        models.User(name="ann").save()
        event.listen(session(), "before_commit", _refuse_commit)
        after_commit(ran.append, "hook")
        return "200 OK"

    with pytest.raises(Boom, match="commit refused"):
        wsgi(session, view).get("/")

    assert ran == []
    assert probe.names() == []


def _refuse_commit(session: Any) -> None:
    raise Boom("commit refused")


def test_hook_is_not_run_after_force_rollback(session: Any, models: Any, probe: Any) -> None:
    ran: list[str] = []

    def view() -> str:
        models.User(name="ann").save()
        after_commit(ran.append, "hook")
        force_rollback()
        return "200 OK"

    wsgi(session, view).get("/")

    assert ran == []
    assert probe.names() == []


def test_hooks_run_in_order_with_their_arguments(session: Any, models: Any) -> None:
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    def view() -> str:
        models.User(name="ann").save()
        after_commit(record, 1, 2, key="a")
        after_commit(record, 3)
        return "200 OK"

    wsgi(session, view).get("/")

    assert calls == [((1, 2), {"key": "a"}), ((3,), {})]


def test_hook_that_raises_is_logged_and_the_others_still_run(
    session: Any, models: Any, probe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise Boom("hook failed")

    def view() -> str:
        models.User(name="ann").save()
        after_commit(ran.append, "first")
        after_commit(broken)
        after_commit(ran.append, "last")
        return "200 OK"

    with caplog.at_level(logging.ERROR, logger="wsgi_sqla"):
        response = wsgi(session, view).get("/")

    assert response.status_int == 200
    assert response.text == "done"
    assert ran == ["first", "last"]
    assert probe.names() == ["ann"]
    (record,) = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Boom]
    assert "after-commit hook" in record.getMessage()


def test_hook_runs_with_no_unit_and_can_open_its_own_transaction(
    session: Any, models: Any, probe: Any
) -> None:
    units: list[object] = []

    def welcome(user_id: int) -> None:
        units.append(current_unit())
        with transaction(session):
            models.User.get(user_id).update(name="ann (welcomed)")

    def view() -> str:
        user = models.User(name="ann").save()
        after_commit(welcome, user.id)
        return "201 Created"

    wsgi(session, view).get("/", status=201)

    assert units == [None]
    assert probe.names() == ["ann (welcomed)"]
    assert not session.registry.has()
    assert probe.checked_out() == 0


# -- in transaction() blocks ------------------------------------------------------


def test_hook_runs_after_the_block_committed(session: Any, models: Any, probe: Any) -> None:
    seen: list[list[str]] = []

    with transaction(session):
        models.User(name="ann").save()
        after_commit(lambda: seen.append(probe.names()))
        assert seen == []

    assert seen == [["ann"]]


def test_hook_is_not_run_when_the_block_raises(session: Any, models: Any, probe: Any) -> None:
    ran: list[str] = []

    with pytest.raises(Boom), transaction(session):
        models.User(name="ann").save()
        after_commit(ran.append, "hook")
        raise Boom

    assert ran == []


def test_hook_is_not_run_when_the_block_is_forced_to_roll_back(session: Any, models: Any) -> None:
    ran: list[str] = []

    with transaction(session):
        models.User(name="ann").save()
        after_commit(ran.append, "hook")
        force_rollback()

    assert ran == []


def test_hook_in_a_nested_block_waits_for_the_outer_commit(
    session: Any, models: Any, probe: Any
) -> None:
    seen: list[list[str]] = []

    with transaction(session):
        with transaction(session):
            models.User(name="ann").save()
            after_commit(lambda: seen.append(probe.names()))
        assert seen == []

    assert seen == [["ann"]]


def test_hook_in_a_nested_block_is_dropped_when_the_outer_block_raises(
    session: Any, models: Any
) -> None:
    ran: list[str] = []

    with pytest.raises(Boom), transaction(session):
        with transaction(session):
            models.User(name="ann").save()
            after_commit(ran.append, "hook")
        raise Boom

    assert ran == []


def test_hook_in_a_helper_called_from_a_view_waits_for_the_response(
    session: Any, models: Any, probe: Any
) -> None:
    ran: list[str] = []

    @transaction(session)
    def add(name: str) -> None:
        models.User(name=name).save()
        after_commit(ran.append, name)

    def view() -> str:
        add("ann")
        return "422 Unprocessable Entity"

    wsgi(session, view).get("/", status=422)

    assert ran == []
    assert probe.names() == []


# -- bad input ------------------------------------------------------------------


def test_after_commit_with_no_unit_running_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"after_commit\(\): needs a running unit of work"):
        after_commit(print)


def test_after_commit_with_something_not_callable_is_a_type_error(session: Any) -> None:
    with pytest.raises(TypeError, match="needs a callable"), transaction(session):
        after_commit("send_mail")  # type: ignore[arg-type]


# -- the example: enqueue a Celery task from a view, only once the row is committed --


@pytest.fixture(scope="module")
def celery_example_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """examples.celery_app with an in-process worker on the in-memory broker.

    Imported once: importing it again would register its task a second time.
    """
    with pytest.MonkeyPatch.context() as patch:
        # Only for the import, which creates the tables on DATABASE_URL.
        import_db = tmp_path_factory.mktemp("celery_example") / "import.sqlite3"
        patch.setenv("DATABASE_URL", f"sqlite:///{import_db}")
        patch.setenv("CELERY_BROKER_URL", "memory://")
        patch.setenv("CELERY_RESULT_BACKEND", "cache+memory://")
        for name in ("examples.models", "examples.celery_app"):
            sys.modules.pop(name, None)
        module = importlib.import_module("examples.celery_app")
    module.celery_app.conf.worker_hijack_root_logger = False  # leave pytest's log capture alone
    module.celery_app.conf.broker_transport_options = {"polling_interval": 0.01}
    with start_worker(module.celery_app, perform_ping_check=False):
        yield module
    module.engine.dispose()
    for name in ("examples.models", "examples.celery_app"):
        sys.modules.pop(name, None)


@pytest.fixture
def celery_example(celery_example_module: ModuleType, engine: Engine) -> Iterator[ModuleType]:
    """The example's session bound to the database under test, its tables created there."""
    module = celery_example_module
    module.db.configure(bind=engine)
    module.Base.metadata.create_all(engine)
    yield module
    module.db.remove()
    module.Base.metadata.drop_all(engine)
    module.db.configure(bind=module.engine)


@pytest.fixture
def published(probe: Any) -> Iterator[list[dict[str, Any]]]:
    """Every task message sent, with the users that were committed when it was sent."""
    messages: list[dict[str, Any]] = []

    def before(sender: str, headers: dict[str, Any], **_: Any) -> None:
        with probe.engine.connect() as connection:
            users = connection.execute(text("SELECT name FROM example_users ORDER BY name"))
            messages.append({"task": sender, "committed": [row[0] for row in users]})

    def after(sender: str, headers: dict[str, Any], **_: Any) -> None:
        messages[-1]["id"] = headers["id"]

    before_task_publish.connect(before, weak=False)
    after_task_publish.connect(after, weak=False)
    yield messages
    before_task_publish.disconnect(before)
    after_task_publish.disconnect(after)


def test_example_enqueues_the_welcome_task_only_after_the_user_is_committed(
    celery_example: ModuleType, published: list[dict[str, Any]], probe: Any
) -> None:
    client = webtest.TestApp(celery_example.app)

    response = client.post_json("/signup", {"name": "ann"}, status=201)

    (message,) = published
    assert message["task"] == "examples.celery_app.send_welcome"
    assert message["committed"] == ["ann"]
    result = celery_example.celery_app.AsyncResult(message["id"])
    assert (
        result.get(timeout=30, interval=0.01) == f"welcome sent to ann (user {response.json['id']})"
    )
    assert probe.count("example_welcomes") == 1


def test_example_enqueues_nothing_when_the_signup_rolls_back(
    celery_example: ModuleType, published: list[dict[str, Any]], probe: Any
) -> None:
    client = webtest.TestApp(celery_example.app)

    response = client.post_json("/signup", {"name": "ann", "referred_by": "nobody"}, status=400)

    assert "unknown referrer" in response.json["error"]
    assert published == []
    assert probe.count("example_users") == 0
