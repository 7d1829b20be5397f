"""Idempotency keys under real servers: 20 duplicates at once run the view once.

Twenty identical keyed POSTs arrive together at gunicorn (2 workers x 8
threads), uWSGI and waitress, while the first one's view sleeps: exactly one
execution of the view, one order row, no 5xx; every other request got 409
(still running) or, once the first committed, its replay.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from support import database_url

from .launchers import launch
from .support import Gunicorn, Reply, Serve, app_tables, load_module

APP = Path(__file__).with_name("idempotency_app.py")
DUPLICATES = 20
KEY = {"Idempotency-Key": '"order-8e03978e"', "Content-Type": "text/plain"}

pytestmark = pytest.mark.parametrize("db_name", ["sqlite", "postgresql", "mariadb"], indirect=True)


@pytest.fixture
def orders_db(db_name: str, tmp_path: Path) -> Iterator[str]:
    """The app's URL, its orders table and keys table fresh."""
    url = database_url(db_name, tmp_path)
    with app_tables(APP, url) as module:
        module.keys.table.drop(module.engine, checkfirst=True)
        module.keys.table.create(module.engine)
        try:
            yield url
        finally:
            module.keys.table.drop(module.engine)


def post(server: Gunicorn, headers: dict[str, str] | None = None) -> Reply:
    return server.request("POST", "/orders", b"book", {**KEY, **(headers or {})})


def burst(server: Gunicorn) -> list[Reply]:
    """The duplicates, all at once."""
    with concurrent.futures.ThreadPoolExecutor(DUPLICATES) as pool:
        return list(pool.map(lambda _: post(server), range(DUPLICATES)))


def orders_in(url: str) -> int:
    module = load_module(APP, url)
    try:
        with module.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(module.Order)).scalar())
    finally:
        module.engine.dispose()


def check_once(server: Gunicorn, url: str, runs: Path) -> dict[str, Any]:
    """The burst ran the view once; what the statuses were."""
    replies = burst(server)
    statuses = [reply.status for reply in replies]
    fresh = [r for r in replies if r.status == 201 and "Idempotent-Replayed" not in r.headers]
    replayed = [r for r in replies if r.headers.get("Idempotent-Replayed") == "true"]
    assert set(statuses) <= {201, 409}, statuses
    assert len(fresh) == 1, statuses
    assert all(r.body == fresh[0].body for r in replayed)
    assert all(json.loads(r.body)["title"] for r in replies if r.status == 409)
    assert len(runs.read_text().splitlines()) == 1
    assert orders_in(url) == 1
    again = post(server)
    assert (again.status, again.body) == (201, fresh[0].body)
    return {"201": len(fresh), "replayed": len(replayed), "409": statuses.count(409)}


def test_twenty_duplicates_on_gunicorn_run_the_view_once(
    gunicorn: Serve, orders_db: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.touch()
    server = gunicorn(
        "idempotency_app:application",
        database=orders_db,
        worker_class="gthread",
        workers=2,
        threads=8,
        env={"RUNS_FILE": str(runs)},
    )
    print(check_once(server, orders_db, runs))


def test_without_keys_the_twenty_duplicates_all_run(
    gunicorn: Serve, orders_db: str, tmp_path: Path
) -> None:
    """The control: the burst really overlaps, and only the keys make it run once."""
    runs = tmp_path / "runs"
    runs.touch()
    server = gunicorn(
        "idempotency_app:application",
        database=orders_db,
        worker_class="gthread",
        workers=2,
        threads=8,
        env={"RUNS_FILE": str(runs), "KEYS": "0"},
    )
    assert [reply.status for reply in burst(server)] == [201] * DUPLICATES
    assert len(runs.read_text().splitlines()) == DUPLICATES
    assert orders_in(orders_db) == DUPLICATES


@pytest.mark.parametrize("name", ["uwsgi", "waitress"])
def test_twenty_duplicates_on_other_servers_run_the_view_once(
    orders_db: str, tmp_path: Path, name: str
) -> None:
    runs = tmp_path / "runs"
    runs.touch()
    server = launch(
        name,
        "idempotency_app:application",
        env={"DATABASE_URL": orders_db, "RUNS_FILE": str(runs)},
        log_dir=tmp_path,
    )
    try:
        print(check_once(server, orders_db, runs))
    finally:
        problems = server.stop()
    assert not problems, problems
