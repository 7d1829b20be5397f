"""The examples served by a real gunicorn, spoken to over real HTTP.

Each worker class users deploy with (sync, gthread with several threads,
gevent) serves examples/flask_app.py and examples/bottle_app.py as they
are, against PostgreSQL; MariaDB and SQLite get the threaded worker. The
database is checked through the test's own connection. Then ``--preload``:
a master that touched the database before forking must not hand one
connection to several workers, and concurrent requests in one worker must
each get their own Session.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from support import database_url

from .support import (
    Gunicorn,
    Serve,
    app_tables,
    fan_out,
    load_module,
    open_transactions,
    servers,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

SERVED = [
    ("postgresql", "flask", "sync"),
    ("postgresql", "flask", "gthread"),
    ("postgresql", "flask", "gevent"),
    ("postgresql", "bottle", "sync"),
    ("postgresql", "bottle", "gthread"),
    ("postgresql", "bottle", "gevent"),
    ("mariadb", "flask", "gthread"),
    ("mariadb", "bottle", "gthread"),
    ("sqlite", "flask", "gthread"),
    ("sqlite", "bottle", "sync"),
]


class Served:
    def __init__(self, server: Gunicorn, engine: Engine) -> None:
        self.server = server
        self.engine = engine

    def rows(self, *names: str) -> list[tuple[int, str]]:
        """Committed (id, name) rows among ``names``, read through the test's connection."""
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT id, name FROM example_users ORDER BY id"))
            return [(r[0], r[1]) for r in rows if r[1] in names]


def tagged(url: str, db: str) -> str:
    """PostgreSQL connections get an application_name, so pg_stat_activity can find them."""
    if db != "postgresql":
        return url
    return (
        make_url(url)
        .update_query_dict({"application_name": "wsgi_sqla_example"})
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="module", params=SERVED, ids=["-".join(p) for p in SERVED])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    db, framework, worker_class = request.param
    plain = database_url(db, tmp_path_factory.mktemp("sqlite"))
    url = tagged(plain, db)
    engine = create_engine(plain)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    # Create the table once here: workers importing the example together would race to.
    load_module(EXAMPLES / "models.py", url).engine.dispose()
    with servers(tmp_path_factory.mktemp("gunicorn")) as serve:
        server = serve(
            f"examples.{framework}_app:app",
            database=url,
            worker_class=worker_class,
            workers=2,
            threads=4,
        )
        yield Served(server, engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    engine.dispose()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_create_read_rename_delete_over_http(served: Served) -> None:
    server, name, renamed = served.server, unique("ann"), unique("bob")
    created = server.post_json("/users", {"name": name})
    assert created.status == 201, created.body
    user_id = created.json()["id"]
    assert served.rows(name) == [(user_id, name)]
    assert server.request("GET", f"/users/{user_id}").json()["name"] == name
    patch = server.request(
        "PATCH",
        f"/users/{user_id}",
        f'{{"name": "{renamed}"}}'.encode(),
        {"Content-Type": "application/json"},
    )
    assert patch.status == 200
    assert served.rows(name, renamed) == [(user_id, renamed)]
    assert server.request("DELETE", f"/users/{user_id}").status == 204
    assert served.rows(renamed) == []
    assert server.request("GET", f"/users/{user_id}").status == 404


def test_duplicate_answers_409_and_keeps_the_first(served: Served) -> None:
    name = unique("ann")
    first = served.server.post_json("/users", {"name": name})
    assert served.server.post_json("/users", {"name": name}).status == 409
    assert served.rows(name) == [(first.json()["id"], name)]


def test_view_that_writes_then_raises_answers_500_and_keeps_nothing(served: Served) -> None:
    name = unique("ann")
    user_id = served.server.post_json("/users", {"name": name}).json()["id"]
    assert served.server.request("POST", f"/users/{user_id}/fail").status == 500
    assert served.rows(name) == [(user_id, name)]


def test_bad_request_answers_400_and_keeps_nothing(served: Served) -> None:
    before = served.rows()
    assert served.server.post_json("/users", {"nom": "ann"}).status == 400
    assert served.rows() == before


def test_concurrent_requests_each_commit_their_own_work(served: Served) -> None:
    names = [unique(f"user{i}") for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda n: served.server.post_json("/users", {"name": n}), names))
    assert [r.status for r in replies] == [201] * len(names)
    assert sorted(served.rows(*names)) == sorted(
        (r.json()["id"], r.json()["name"]) for r in replies
    )


def test_no_connection_is_left_inside_a_transaction(served: Served) -> None:
    for _ in range(4):
        served.server.post_json("/users", {"name": unique("ann")})
        served.server.post_json("/users", {"nom": "bad"})
    assert open_transactions(served.engine, "wsgi_sqla_example") == []


# -- gunicorn --preload ------------------------------------------------------------


SOAK_APP = Path(__file__).with_name("soak_app.py")


@pytest.fixture
def soak_tables(db_name: str, tmp_path: Path) -> Iterator[str]:
    """The soak application's tables on database ``db_name``; yields its URL."""
    url = database_url(db_name, tmp_path)
    with app_tables(SOAK_APP, url):
        yield url


PRELOADED = [
    ("postgresql", "sync", None),
    ("postgresql", "gthread", None),
    ("postgresql", "gevent", "gevent_preload_conf.py"),
    ("mariadb", "sync", None),
]


@pytest.mark.parametrize(
    ("db_name", "worker_class", "config"),
    PRELOADED,
    ids=[f"{db}-{worker}" for db, worker, _ in PRELOADED],
    indirect=["db_name"],
)
def test_preloaded_workers_never_share_a_connection(
    gunicorn: Serve, soak_tables: str, worker_class: str, config: str | None
) -> None:
    """The master's start-up check left a connection in its pool; no worker may use it."""
    server = gunicorn(
        "soak_app:app",
        database=soak_tables,
        worker_class=worker_class,
        workers=3,
        threads=2,
        preload=True,
        config=config,
    )
    seen: dict[Any, set[int]] = {}
    for _ in range(10):  # until several workers answered
        for answer in fan_out(server, "/backend", 12, 6):
            seen.setdefault(answer["backend"], set()).add(answer["pid"])
        if len(set().union(*seen.values())) >= 2:
            break
    assert len(set().union(*seen.values())) >= 2, "only one worker ever answered"
    shared = {backend: pids for backend, pids in seen.items() if len(pids) > 1}
    assert shared == {}, f"database connections used by several worker processes: {shared}"


TOGETHER = [
    ("gthread", False, None),
    ("gevent", False, None),
    ("gevent", True, "gevent_preload_conf.py"),
]


@pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("worker_class", "preload", "config"),
    TOGETHER,
    ids=["gthread", "gevent", "gevent-preload"],
)
def test_concurrent_requests_in_one_worker_get_their_own_session(
    gunicorn: Serve, soak_tables: str, worker_class: str, preload: bool, config: str | None
) -> None:
    server = gunicorn(
        "soak_app:app",
        database=soak_tables,
        worker_class=worker_class,
        workers=1,
        threads=4,
        preload=preload,
        config=config,
    )
    group = uuid.uuid4().hex
    paths = [f"/together?group={group}&n=3&key={key}" for key in "abc"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda p: server.request("GET", p), paths))
    answers = [r.json() for r in replies]
    assert [(a["keys"], a["same_session"]) for a in answers] == [
        (["a"], True),
        (["b"], True),
        (["c"], True),
    ]
