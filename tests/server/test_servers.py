"""The same promises over real HTTP on every server: gunicorn, uWSGI, waitress, mod_wsgi.

One table of checks, run once per server through the ``on_server`` fixture,
against PostgreSQL. The application is soak_app.py (plain WSGI, so that a
raising view reaches the middleware, as it does on a bare app or Pyramid);
it opens a connection at import, so a server that imports it in a master
and then forks (uWSGI's default mode) hands that pool to every worker.
uWSGI runs in that default mode: no ``--lazy-apps``, no fork-hook flag.
The examples (Flask, Bottle) are then served by each server other than
gunicorn (tests/server/test_gunicorn.py covers it), as they are: they create
their table at import.

Database state is read through the test's own connection.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from support import database_url

from .launchers import SERVER_NAMES, launch, sendfile_calls
from .support import Gunicorn, app_tables, load_module, open_transactions
from .test_faults import read_some_then_hang_up

ROOT = Path(__file__).resolve().parents[2]
SOAK_APP = Path(__file__).with_name("soak_app.py")
DOWNLOAD_SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of any buffer size


class OnServer:
    """A server running soak_app, the download it serves, and the test's own engine."""

    def __init__(self, name: str, server: Gunicorn, engine: Engine, download: bytes) -> None:
        self.name = name
        self.server = server
        self.engine = engine
        self.download = download

    def tags(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(text("SELECT tag FROM soak_items")).scalars())

    def log_shows(self, needle: str, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.server.log.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        return False

    def no_open_transaction(self, timeout: float = 15) -> list[tuple[object, ...]]:
        """Waits until no connection of the application sits inside a transaction."""
        deadline = time.monotonic() + timeout
        while True:
            found = open_transactions(self.engine, "wsgi_sqla_soak")
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def readable_dir() -> Path:
    """A directory every server's workers can read (Apache's run as www-data)."""
    path = Path(tempfile.mkdtemp(prefix="wsgi_sqla-files-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


#: Every server on PostgreSQL; uWSGI's default mode on MariaDB too (the protocol errors there).
SERVED = [(name, "postgresql") for name in SERVER_NAMES] + [("uwsgi", "mariadb")]


@pytest.fixture(scope="module", params=SERVED, ids=[f"{s}-{db}" for s, db in SERVED])
def on_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnServer]:
    name, db = request.param
    url = database_url(db, Path())
    files = readable_dir()
    download = os.urandom(DOWNLOAD_SIZE)
    path = files / "download.bin"
    path.write_bytes(download)
    path.chmod(0o644)
    engine = create_engine(url)
    try:
        with app_tables(SOAK_APP, url):
            server = launch(
                name,
                "soak_app:app",
                env={"DATABASE_URL": url, "SOAK_DOWNLOAD": str(path)},
                log_dir=tmp_path_factory.mktemp(name),
                workers=2,
                files=(SOAK_APP,),
            )
            try:
                yield OnServer(name, server, engine, download)
            finally:
                problems = server.stop()
                if problems:
                    pytest.fail("\n\n".join(problems), pytrace=False)
    finally:
        engine.dispose()
        path.unlink()
        files.rmdir()


def key() -> str:
    return uuid.uuid4().hex


# First: later requests may have broken and replaced the inherited connection.
def test_no_connection_is_shared_between_two_worker_processes(on_server: OnServer) -> None:
    if on_server.name == "waitress":
        pytest.skip("waitress serves from one process: there is no second worker to share with")
    seen: dict[Any, set[int]] = {}
    for _ in range(20):  # until both workers answered
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(lambda _: on_server.server.request("GET", "/backend"), range(12))
            )
        assert [r.status for r in replies] == [200] * 12, [r.body for r in replies]
        for answer in (r.json() for r in replies):
            seen.setdefault(answer["backend"], set()).add(answer["pid"])
        if len(set().union(*seen.values())) >= 2:
            break
    assert len(set().union(*seen.values())) >= 2, "only one worker ever answered"
    shared = {backend: pids for backend, pids in seen.items() if len(pids) > 1}
    assert shared == {}, f"database connections used by several worker processes: {shared}"


def test_commit_is_visible_when_the_2xx_arrives(on_server: OnServer) -> None:
    k = key()
    assert on_server.server.request("POST", f"/write?key={k}").status == 201
    assert k in on_server.tags()


def test_4xx_keeps_nothing(on_server: OnServer) -> None:
    k = key()
    assert on_server.server.request("POST", f"/reject?key={k}").status == 422
    assert k not in on_server.tags()


def test_raise_answers_5xx_keeps_nothing_reveals_nothing_and_is_logged(
    on_server: OnServer,
) -> None:
    k = key()
    reply = on_server.server.request("POST", f"/raise?key={k}")
    assert reply.status >= 500
    assert b"fails after writing" not in reply.body and b"Traceback" not in reply.body
    assert k not in on_server.tags()
    assert on_server.log_shows("RuntimeError: this view fails after writing"), "not logged"


def test_commit_failure_answers_5xx_never_2xx(on_server: OnServer) -> None:
    if on_server.engine.dialect.name != "postgresql":
        pytest.skip("MariaDB has no deferrable constraints: nothing can pass flush and fail COMMIT")
    k = key()
    reply = on_server.server.request("POST", f"/commit-fail?key={k}")
    assert reply.status >= 500
    assert b"soak_claims" not in reply.body and b"Traceback" not in reply.body
    assert k not in on_server.tags()
    with on_server.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM soak_claims")).scalar_one() == 0


def test_client_hanging_up_mid_stream_leaves_no_backend_in_a_transaction(
    on_server: OnServer,
) -> None:
    k = key()
    received = read_some_then_hang_up(
        on_server.server, f"/stream?key={k}&chunks=256&size=65536", 4096
    )
    assert received.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
    assert on_server.no_open_transaction() == []
    tags = on_server.tags()
    assert k in tags, "the client was told 200: the request's work must be committed"
    assert f"{k}/s" not in tags, "work done while streaming was kept though the body was cut"


#: How each server shows it took its fast path for a wsgi.file_wrapper response.
FAST_PATH = {
    "gunicorn": "sendfile",
    "uwsgi": "sendfile",
    "mod_wsgi": "sendfile",
    # waitress has no sendfile; it serves its own wrapper from its I/O loop and, since the
    # application gave no Content-Length, computes one from the file: only on that path.
    "waitress": "content-length",
}


def test_download_arrives_byte_exact_by_the_fast_path(on_server: OnServer) -> None:
    k = key()
    with sendfile_calls(on_server.server) as calls:
        reply = on_server.server.request("GET", f"/download?key={k}")
    assert reply.status == 200
    assert reply.body == on_server.download
    assert k in on_server.tags()
    if FAST_PATH[on_server.name] == "sendfile":
        assert sum(calls) >= len(on_server.download), f"sendfile calls: {calls}"
    else:
        assert reply.headers.get("Content-Length") == str(len(on_server.download))


def test_50_concurrent_requests_each_commit_their_own_row(on_server: OnServer) -> None:
    keys = [key() for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(
            pool.map(lambda k: on_server.server.request("POST", f"/write?key={k}"), keys)
        )
    assert [r.status for r in replies] == [201] * 50
    assert set(keys) <= on_server.tags()


# -- the examples, as they are, on the servers other than gunicorn ----------------------

EXAMPLE_SERVERS = [
    (server, framework)
    for server in SERVER_NAMES
    if server != "gunicorn"
    for framework in ("flask", "bottle")
]


class Example:
    def __init__(self, server: Gunicorn, engine: Engine) -> None:
        self.server = server
        self.engine = engine

    def names(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(text("SELECT name FROM example_users")).scalars())


@pytest.fixture(
    scope="module", params=EXAMPLE_SERVERS, ids=[f"{s}-{f}" for s, f in EXAMPLE_SERVERS]
)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    name, framework = request.param
    url = database_url("postgresql", Path())
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    # Created here first: two workers importing the example at once would race to create it.
    load_module(ROOT / "examples" / "models.py", url).engine.dispose()
    server = launch(
        name,
        f"examples.{framework}_app:app",
        env={"DATABASE_URL": url},
        log_dir=tmp_path_factory.mktemp(name),
        workers=2,
    )
    try:
        yield Example(server, engine)
    finally:
        problems = server.stop()
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS example_users"))
        engine.dispose()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def test_example_commits_a_201_and_keeps_nothing_of_a_400_or_a_raise(example: Example) -> None:
    name = f"ann-{key()[:8]}"
    created = example.server.post_json("/users", {"name": name})
    assert created.status == 201, created.body
    assert name in example.names()
    before = example.names()
    assert example.server.post_json("/users", {"nom": "x"}).status == 400
    user_id = created.json()["id"]
    assert example.server.request("POST", f"/users/{user_id}/fail").status == 500
    assert example.names() == before
