"""The Flask and Bottle examples through a transaction-pooling PgBouncer, under gunicorn.

Sixteen clients drive a mixed load (create, read, rename, read again, a
duplicate that must answer 409, a write-then-raise that must answer 500,
delete some) at ``gunicorn --worker-class gthread --workers 2 --threads 8``
whose ``DATABASE_URL`` points at our PgBouncer with 4 server connections.

The control: the examples as a new user first runs them, with psycopg 3's
defaults, answer some requests with an error they should never give, and
the log names psycopg's prepared statements. With
``DATABASE_POOLING=transaction`` the same load gets exactly the answers it
calls for, the table equals what the clients were told, and PgBouncer and
PostgreSQL are left with no busy or idle-in-transaction server connection.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from harness.pgbouncer import PgBouncer

from ..support import Gunicorn, Serve, load_module
from .checks import assert_nothing_left_open

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CLIENTS = 16
USERS = 300  # 7 requests each: 2,100 requests per run
CONTROL_USERS = 150


@dataclass
class Outcome:
    """What one client saw while it walked one user through its life."""

    name: str
    user_id: int | None
    final_name: str | None  # None: deleted
    unexpected: list[tuple[str, int, bytes]]


def life_of_a_user(server: Gunicorn, index: int) -> Outcome:
    """Create, read, rename, read, duplicate (409), fail (500), maybe delete."""
    name, renamed = f"u{index}-{uuid.uuid4().hex[:8]}", f"r{index}-{uuid.uuid4().hex[:8]}"
    unexpected: list[tuple[str, int, bytes]] = []

    def expect(step: str, status: int, method: str, path: str, body: object = None) -> bytes:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        reply = server.request(method, path, payload, headers)
        if reply.status != status:
            unexpected.append((step, reply.status, reply.body[:200]))
        return reply.body

    created = expect("create", 201, "POST", "/users", {"name": name})
    try:
        user_id = int(json.loads(created)["id"])
    except (ValueError, KeyError, TypeError):
        return Outcome(name, None, None, unexpected)
    expect("read", 200, "GET", f"/users/{user_id}")
    expect("rename", 200, "PATCH", f"/users/{user_id}", {"name": renamed})
    expect("read renamed", 200, "GET", f"/users/{user_id}")
    expect("duplicate", 409, "POST", "/users", {"name": renamed})
    expect("fail", 500, "POST", f"/users/{user_id}/fail")
    final: str | None = renamed
    if index % 3 == 0:
        expect("delete", 204, "DELETE", f"/users/{user_id}")
        final = None
    return Outcome(name, user_id, final, unexpected)


def drive(server: Gunicorn, users: int) -> list[Outcome]:
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: life_of_a_user(server, i), range(users)))


@pytest.fixture
def example_table(postgresql_url: str) -> Iterator[Engine]:
    """A fresh example_users table, created directly on PostgreSQL; a probe engine on it."""
    engine = create_engine(postgresql_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    load_module(EXAMPLES / "models.py", postgresql_url).engine.dispose()
    try:
        yield engine
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS example_users"))
        engine.dispose()


def serve_example(
    gunicorn: Serve, bouncer: PgBouncer, framework: str, pooling: str | None
) -> Gunicorn:
    return gunicorn(
        f"examples.{framework}_app:app",
        database=bouncer.url(application_name="wsgi_sqla_example"),
        worker_class="gthread",
        workers=2,
        threads=8,
        env={"DATABASE_POOLING": pooling} if pooling else {"DATABASE_POOLING": ""},
    )


def test_control_default_psycopg_fails_through_a_transaction_pooler(
    gunicorn: Serve, pgbouncer: PgBouncer, example_table: Engine
) -> None:
    server = serve_example(gunicorn, pgbouncer, "flask", pooling=None)
    outcomes = drive(server, CONTROL_USERS)
    wrong = [u for o in outcomes for u in o.unexpected]
    print(f"\ncontrol: {len(wrong)} unexpected answers out of about {CONTROL_USERS * 7} requests")
    assert wrong, "the default configuration passed: the control proves nothing"
    log = server.log.read_text()
    assert "_pg3_" in log, "the errors were not psycopg's prepared statements"
    assert "TransactionPoolerWarning" in log, "wsgi_sqla did not explain the failure"


@pytest.mark.parametrize("framework", ["flask", "bottle"])
def test_examples_with_transaction_pooling_answer_every_request_right(
    gunicorn: Serve,
    pgbouncer: PgBouncer,
    postgresql_url: str,
    example_table: Engine,
    framework: str,
) -> None:
    server = serve_example(gunicorn, pgbouncer, framework, pooling="transaction")
    outcomes = drive(server, USERS)
    steps = collections.Counter(step for o in outcomes for step, _, _ in o.unexpected)
    assert [u for o in outcomes for u in o.unexpected] == [], steps
    with example_table.connect() as connection:
        stored = {
            row[0]: row[1] for row in connection.execute(text("SELECT id, name FROM example_users"))
        }
    told = {o.user_id: o.final_name for o in outcomes if o.final_name is not None}
    assert stored == told
    assert_nothing_left_open(pgbouncer, example_table)
    assert "_pg3_" not in server.log.read_text()
