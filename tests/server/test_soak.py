"""A bounded soak: thousands of mixed requests against gunicorn gthread on PostgreSQL.

Sixteen clients drive a random, seeded mix of requests at soak_app.py: writes
that succeed, writes that end 422, views that raise after writing, writes
whose COMMIT fails, streamed bodies read to the end or cut off by a client
that hangs up, SERIALIZABLE counter bumps that conflict (retried by the
middleware), clients that send a write and leave without reading the
answer, and requests that touch no database. Every request writes a row
tagged with its own key, so afterwards the database can be compared, row by
row, with a model computed only from what the clients saw:

* a key is stored exactly when its client saw a 2xx (or left without
  reading, in which case the server decided alone and committed);
* work done while streaming is stored exactly when the body was read to
  its end;
* the counter equals the number of bumps answered 201;
* no worker has a connection checked out, none sits in a transaction, no
  request left its session behind, no worker died;
* after a warm-up third of the run, the workers' live Python objects stay
  put and their resident memory grows by no more than a small allowance.

The run prints its request count, outcomes and duration.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from support import database_url

from .support import Gunicorn, Serve, app_tables, open_transactions

SOAK_APP = Path(__file__).with_name("soak_app.py")
REQUESTS = int(os.environ.get("WSGI_SQLA_SOAK_REQUESTS", "5000"))
CLIENTS = 16
SEED = int(os.environ.get("WSGI_SQLA_SOAK_SEED", str(random.randrange(1 << 30))))

MIX = {
    "write": 28,
    "reject": 12,
    "raise": 10,
    "commit-fail": 10,
    "stream": 10,
    "hang-up": 5,
    "bump": 12,
    "leave": 5,
    "ping": 8,
}

STATUS: dict[str, set[int | None]] = {
    "write": {201},
    "reject": {422},
    "raise": {500},
    "commit-fail": {500},
    "stream": {200},
    "hang-up": {200},
    # A bump that loses its serialization conflict more often than the middleware
    # retries (10 times) ends 500; rare, and then nothing of it may be kept.
    "bump": {201, 500},
    "leave": {None},
    "ping": {200},
}

# After the warm-up, a worker's live Python objects may drift by less than this
# while it serves about a thousand more requests: a Session, connection or
# traceback kept per request would add dozens of objects each time. Measured:
# drift within +-30 over 18,000 requests.
OBJECT_GROWTH = 200
# And its RSS by less than this many bytes per request of the whole run after the
# warm-up (the allocator still settles for a while; measured 150 to 500).
RSS_GROWTH_PER_REQUEST = 2048

pytestmark = [pytest.mark.soak, pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)]


@dataclass
class Seen:
    """What one client saw of one request."""

    kind: str
    key: str
    status: int | None = None  # None: no status line was read
    complete: bool = False  # the whole body was read
    failure: str | None = None  # the client could not talk to the server


def send(server: Gunicorn, kind: str, key: str) -> Seen:
    seen = Seen(kind, key)
    paths = {
        "write": f"/write?key={key}",
        "reject": f"/reject?key={key}",
        "raise": f"/raise?key={key}",
        "commit-fail": f"/commit-fail?key={key}",
        "stream": f"/stream?key={key}&chunks=16&size=4096",
        "bump": f"/bump?key={key}",
    }
    try:
        if kind == "hang-up":
            head = hang_up(server, f"/stream?key={key}&chunks=128&size=65536")
            seen.status = int(head.split(b" ", 2)[1])
        elif kind == "leave":
            leave(server, f"/write?key={key}")
        else:
            method = "GET" if kind == "ping" else "POST"
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                connection.request(
                    method, paths.get(kind, "/ping"), headers={"Connection": "close"}
                )
                response = connection.getresponse()
                seen.status = response.status
                body = response.read()
                seen.complete = kind != "stream" or len(body) == 16 * 4096
            finally:
                connection.close()
    except OSError as exc:
        seen.failure = repr(exc)
    return seen


def hang_up(server: Gunicorn, path: str) -> bytes:
    """Read the head and the first bytes of a 8 MiB body, then close the connection."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(60)
    try:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 1024:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received.split(b"\r\n", 1)[0]
    finally:
        sock.close()


def leave(server: Gunicorn, path: str) -> None:
    """Send a whole request and close the connection without reading the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())


def expected_tags(seen: list[Seen]) -> set[str]:
    """The rows the database must hold, from what the clients saw and nothing else."""
    tags: set[str] = set()
    for s in seen:
        told_success = s.status is not None and 200 <= s.status < 300
        if s.kind != "ping" and (told_success or s.kind == "leave"):
            tags.add(s.key)
        if s.kind == "stream" and s.status == 200 and s.complete:
            tags.add(f"{s.key}/s")
    return tags


@dataclass
class Soak:
    """The soak's server, and an engine straight to the database for the checks."""

    server: Gunicorn
    engine: Engine


@contextlib.contextmanager
def soak_server(
    serve: Serve, url: str, *, through: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Soak]:
    """The soak's tables on ``url`` and its server, reaching them through ``through``.

    ``through`` is the URL the workers use (a pooler in front of ``url``); the
    tables and the checks always go straight to ``url``.
    """
    with app_tables(SOAK_APP, url) as module:
        with module.engine.begin() as connection:
            connection.execute(text("INSERT INTO soak_counter (id, value) VALUES (1, 0)"))
        engine = create_engine(url)
        try:
            server = serve(
                "soak_app:app",
                database=through or url,
                worker_class="gthread",
                workers=2,
                threads=8,
                env={"SOAK_RETRIES": "10", **(env or {})},
            )
            yield Soak(server, engine)
        finally:
            engine.dispose()


@pytest.fixture
def soak(db_name: str, tmp_path: Path, gunicorn: Serve) -> Iterator[Soak]:
    with soak_server(gunicorn, database_url(db_name, tmp_path)) as running:
        yield running


def drive(server: Gunicorn, plan: list[tuple[str, str]]) -> list[Seen]:
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda step: send(server, *step), plan))


def diag_of_every_worker(server: Gunicorn) -> dict[int, dict[str, int]]:
    """/diag of each worker: asks until every worker has answered once."""
    workers = set(server.workers())
    answers: dict[int, dict[str, int]] = {}
    for _ in range(200):
        answer = server.request("GET", "/diag").json()
        answers[answer["pid"]] = answer
        if workers <= set(answers):
            return answers
    raise AssertionError(f"workers {workers} did not all answer /diag: {sorted(answers)}")


def test_soak_database_equals_what_the_clients_saw(soak: Soak) -> None:
    run_soak(soak)


def run_soak(soak: Soak, label: str = "") -> None:
    """Drive the seeded mix at the soak's server, print the figures, check everything."""
    rng = random.Random(SEED)
    kinds, weights = zip(*MIX.items(), strict=True)
    plan = [(rng.choices(kinds, weights)[0], uuid.uuid4().hex) for _ in range(REQUESTS)]
    warm_up = len(plan) // 3  # pools, caches and threads fill up; then memory must stay put
    workers = soak.server.workers()

    started = time.monotonic()
    seen = drive(soak.server, plan[:warm_up])
    warm = diag_of_every_worker(soak.server)
    seen += drive(soak.server, plan[warm_up:])
    duration = time.monotonic() - started
    end = diag_of_every_worker(soak.server)

    outcomes = collections.Counter((s.kind, s.status) for s in seen)
    retried = soak.server.log.read_text().count("failed with a transient error")
    print(
        f"\nsoak{label} (seed {SEED}): {len(seen)} requests by {CLIENTS} clients in "
        f"{duration:.1f} s ({len(seen) / duration:.0f}/s); "
        f"retries after serialization failures: {retried}"
    )
    for pid in workers:
        print(
            f"  worker {pid}: {warm[pid]['objects']} -> {end[pid]['objects']} live objects, "
            f"RSS {warm[pid]['rss_kb']} -> {end[pid]['rss_kb']} KiB"
        )
    for (kind, status), count in sorted(outcomes.items(), key=str):
        print(f"  {kind:12} {status}: {count}")

    # Every client got through, and got the answer its request calls for.
    assert [s for s in seen if s.failure] == []
    assert soak.server.workers() == workers, "a worker was replaced during the soak"
    for s in seen:
        assert s.status in STATUS[s.kind], s
        assert s.kind != "stream" or s.complete, s

    # Nothing leaked: no connection checked out, none inside a transaction.
    assert {pid: a["checked_out"] for pid, a in end.items()} == dict.fromkeys(workers, 0)
    assert open_transactions(soak.engine, "wsgi_sqla_soak") == []

    # The database is exactly what the clients were told.
    with soak.engine.connect() as connection:
        stored = set(connection.execute(text("SELECT tag FROM soak_items")).scalars())
        claims = connection.execute(text("SELECT count(*) FROM soak_claims")).scalar_one()
        counter = connection.execute(text("SELECT value FROM soak_counter")).scalar_one()
    expected = expected_tags(seen)
    assert stored - expected == set(), "rows that no client was told about were committed"
    assert expected - stored == set(), "rows whose client saw success are missing"
    assert claims == 0
    assert counter == outcomes[("bump", 201)]
    assert outcomes[("bump", 201)] > outcomes[("bump", 500)], "retries did not help the bumps"

    # Memory does not grow with the number of requests.
    for pid in workers:
        assert end[pid]["objects"] - warm[pid]["objects"] < OBJECT_GROWTH, (pid, warm, end)
        rss_growth = (end[pid]["rss_kb"] - warm[pid]["rss_kb"]) * 1024
        assert rss_growth < RSS_GROWTH_PER_REQUEST * (len(plan) - warm_up), (pid, warm, end)
    soak.server.check()
