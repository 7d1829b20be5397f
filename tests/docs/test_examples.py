"""The example applications do what the README says, on every database.

Each test loads the example module afresh with ``DATABASE_URL`` pointing at
the database under test, drives it through WebTest, checks the database
through a separate connection, and drops the example's table afterwards.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import webtest
from sqlalchemy import Engine, text


@pytest.fixture(params=["flask_app", "bottle_app"])
def example(
    request: pytest.FixtureRequest, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The example imported afresh, on the database under test."""
    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    drop_tables(engine)
    for name in ("examples.models", f"examples.{request.param}"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(f"examples.{request.param}")
    yield module
    module.db.remove()
    sys.modules["examples.models"].engine.dispose()
    for name in ("examples.models", f"examples.{request.param}"):
        sys.modules.pop(name, None)
    drop_tables(engine)


def drop_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
        connection.execute(text("DROP TABLE IF EXISTS wsgi_sqla_idempotency_keys"))


def stored(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, name FROM example_users ORDER BY id"))
        return [(row[0], row[1]) for row in rows]


def client(example: ModuleType) -> Any:
    return webtest.TestApp(example.app)


def test_create_commits_and_answers_201(example: ModuleType, engine: Engine) -> None:
    created = client(example).post_json("/users", {"name": "ann"}, status=201).json
    assert stored(engine) == [(created["id"], "ann")]


def test_duplicate_name_answers_409_and_keeps_the_first(
    example: ModuleType, engine: Engine
) -> None:
    app = client(example)
    app.post_json("/users", {"name": "ann"}, status=201)
    app.post_json("/users", {"name": "ann"}, status=409)
    assert [name for _, name in stored(engine)] == ["ann"]


def test_bad_body_answers_400(example: ModuleType, engine: Engine) -> None:
    client(example).post_json("/users", {"nom": "ann"}, status=400)
    assert stored(engine) == []


# Flask answers ``return "", 204`` with a Content-Type, which WebTest's lint flags.
@pytest.mark.filterwarnings("ignore:Content-Type header found in a 204 response:Warning:webtest")
def test_update_and_delete(example: ModuleType, engine: Engine) -> None:
    app = client(example)
    user_id = app.post_json("/users", {"name": "ann"}, status=201).json["id"]
    assert app.patch_json(f"/users/{user_id}", {"name": "bob"}).json["name"] == "bob"
    assert stored(engine) == [(user_id, "bob")]
    app.delete(f"/users/{user_id}", status=204)
    assert stored(engine) == []
    app.get(f"/users/{user_id}", status=404)


def test_view_that_writes_then_raises_answers_500_and_keeps_nothing(
    example: ModuleType, engine: Engine
) -> None:
    app = client(example)
    user_id = app.post_json("/users", {"name": "ann"}, status=201).json["id"]
    app.post(f"/users/{user_id}/fail", status=500, expect_errors=True)
    assert stored(engine) == [(user_id, "ann")]
    assert sys.modules["examples.models"].engine.pool.checkedout() == 0


@pytest.mark.parametrize("example", ["flask_app"], indirect=True)
def test_flask_replays_a_keyed_post_instead_of_running_it_again(
    example: ModuleType, engine: Engine
) -> None:
    app = client(example)
    key = {"Idempotency-Key": '"7f6c"'}
    first = app.post_json("/users", {"name": "ann"}, headers=key, status=201)
    again = app.post_json("/users", {"name": "ann"}, headers=key, status=201)
    assert (again.body, again.headers["Idempotent-Replayed"]) == (first.body, "true")
    app.post_json("/users", {"name": "bob"}, headers=key, status=422)
    assert stored(engine) == [(first.json["id"], "ann")]


def test_listing_answers_the_same_bare_json_list_on_every_framework(
    example: ModuleType, engine: Engine
) -> None:
    app = client(example)
    user_id = app.post_json("/users", {"name": "ann"}, status=201).json["id"]
    listed = app.get("/users", status=200)
    assert listed.content_type == "application/json"
    assert listed.json == [{"id": user_id, "name": "ann"}]
