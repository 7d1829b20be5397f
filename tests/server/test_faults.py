"""Faults under a real gunicorn, on PostgreSQL and MariaDB.

The soak application (soak_app.py) runs in one gthread worker and reaches
its database through a :class:`TcpProxy`, so a test can cut the database
off without touching the shared server. Each fault is followed by the same
checks: the client got the right status, nothing uncommitted is visible,
what was committed before is still there, the worker has no connection
checked out and none sits inside a transaction, and the next request
succeeds with no restart.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from support import database_url

from .support import Gunicorn, TcpProxy, app_tables, open_transactions, servers

SOAK_APP = Path(__file__).with_name("soak_app.py")


class Faulty:
    """The served application, its proxy (if any), and a connection of the test's own."""

    def __init__(self, server: Gunicorn, proxy: TcpProxy | None, engine: Engine) -> None:
        self.server = server
        self.proxy = proxy
        self.engine = engine
        self.dialect = engine.dialect.name

    def tags(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(text("SELECT tag FROM soak_items")).scalars())

    def write(self) -> str:
        key = uuid.uuid4().hex
        reply = self.server.request("POST", f"/write?key={key}")
        assert reply.status == 201, reply.body
        return key

    def settled(self) -> int:
        """Connections the worker has checked out, once no request is running."""
        deadline = time.monotonic() + 15
        while True:
            checked_out = int(self.server.request("GET", "/diag").json()["checked_out"])
            if checked_out == 0 or time.monotonic() > deadline:
                return checked_out
            time.sleep(0.05)

    def assert_healthy(self, *committed: str) -> None:
        """Nothing leaked, nothing lost, and the next request works without a restart."""
        assert self.settled() == 0
        assert open_transactions(self.engine, "wsgi_sqla_soak") == []
        after = self.write()
        assert {*committed, after} <= self.tags()
        self.server.check()

    def backend_sleeping(self) -> int:
        """The id of the database connection that is running the /sleep request's query."""
        if self.dialect == "postgresql":
            query = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'wsgi_sqla_soak' AND state = 'active' "
                "AND query LIKE 'SELECT pg_sleep%%'"
            )
        else:
            query = (
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND info LIKE 'SELECT SLEEP%%'"
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.engine.connect() as connection:
                found = connection.execute(text(query)).scalars().all()
            if found:
                assert len(found) == 1, found
                return int(found[0])
            time.sleep(0.05)
        raise AssertionError("the /sleep request never reached the database")

    def kill(self, backend: int) -> None:
        with self.engine.connect() as connection:
            if self.dialect == "postgresql":
                killed = connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
                assert killed.scalar_one() is True
            else:
                connection.execute(text(f"KILL {int(backend)}"))


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def faulty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Faulty]:
    url = database_url(request.param, Path())
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 0)
    engine = create_engine(url)
    with app_tables(SOAK_APP, url), servers(tmp_path_factory.mktemp("gunicorn")) as serve:
        proxy.start()
        try:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            server = serve(
                "soak_app:app",
                database=proxied.render_as_string(hide_password=False),
                worker_class="gthread",
                workers=1,
                threads=4,
            )
            yield Faulty(server, proxy, engine)
        finally:
            proxy.stop()
            engine.dispose()


def test_backend_killed_mid_request_answers_500_and_keeps_nothing(faulty: Faulty) -> None:
    kill_mid_request_and_check(faulty)


def kill_mid_request_and_check(faulty: Faulty) -> None:
    """Kill the backend running a request's query: 500, nothing kept, all healthy after."""
    kept, lost = faulty.write(), uuid.uuid4().hex
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(faulty.server.request, "POST", f"/sleep?key={lost}&seconds=60")
        faulty.kill(faulty.backend_sleeping())
        assert reply.result().status == 500
    assert lost not in faulty.tags()
    faulty.assert_healthy(kept)


def test_commit_failure_answers_500_and_keeps_nothing(faulty: Faulty) -> None:
    if faulty.dialect != "postgresql":
        pytest.skip("MariaDB has no deferrable constraints: nothing can pass flush and fail COMMIT")
    kept, lost = faulty.write(), uuid.uuid4().hex
    assert faulty.server.request("POST", f"/commit-fail?key={lost}").status == 500
    assert lost not in faulty.tags()
    with faulty.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM soak_claims")).scalar_one() == 0
    faulty.assert_healthy(kept)


def read_some_then_hang_up(server: Gunicorn, path: str, wanted: int) -> bytes:
    """Send a request, read its head and ``wanted`` body bytes, then close the socket."""
    sock = socket.socket()
    # A small receive window: the server cannot push the whole body into our buffers.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < wanted:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    sock.close()
    return received


def test_client_hanging_up_mid_stream_keeps_the_answer_and_drops_the_streamed_work(
    faulty: Faulty,
) -> None:
    hang_up_mid_stream_and_check(faulty)


def hang_up_mid_stream_and_check(faulty: Faulty) -> None:
    """A client hangs up mid-stream: the answer's work is kept, the streamed work is not."""
    key = uuid.uuid4().hex
    # 16 MiB: more than the server's socket buffer can hold, so it is still sending.
    received = read_some_then_hang_up(
        faulty.server, f"/stream?key={key}&chunks=256&size=65536", 4096
    )
    assert received.startswith(b"HTTP/1.1 200 ")
    assert faulty.settled() == 0
    keys = faulty.tags()
    assert key in keys, "the client was told 200: the request's work must be committed"
    assert f"{key}/s" not in keys, "work done while streaming was kept though the body was cut"
    faulty.assert_healthy(key)


def test_stream_read_to_the_end_keeps_the_streamed_work(faulty: Faulty) -> None:
    key = uuid.uuid4().hex
    reply = faulty.server.request("POST", f"/stream?key={key}&chunks=16&size=65536")
    assert (reply.status, len(reply.body)) == (200, 16 * 65536)
    # The streamed work commits at close(), which the server calls after the last byte.
    assert faulty.settled() == 0
    assert {key, f"{key}/s"} <= faulty.tags()
    faulty.assert_healthy(key)


def test_database_unreachable_answers_500_then_recovers_without_restart(faulty: Faulty) -> None:
    kept, lost = faulty.write(), uuid.uuid4().hex
    assert faulty.proxy is not None
    faulty.proxy.stop()
    try:
        assert faulty.server.request("POST", f"/write?key={lost}").status == 500
        assert faulty.server.request("GET", "/ping").status == 200, "a request without SQL failed"
    finally:
        faulty.proxy.start()
    assert lost not in faulty.tags()
    faulty.assert_healthy(kept)
