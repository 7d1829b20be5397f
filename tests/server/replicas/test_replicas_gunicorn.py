"""Read replicas under gunicorn's gthread worker, over real HTTP.

The same application as the in-process tests (``replica_app.py``), served by
two gunicorn workers with four threads each, against the real primary and
its two streaming replicas; the client is ``http.client`` and carries the
position token itself, as a browser would (the cookie) or as an API client
would (the header). Each worker keeps its own view of the replicas. The lag
bound is also checked under uWSGI's default mode, whose master forks its
workers without Python's fork hooks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness.clusters import Cluster
from wsgi_sqla import POSITION_COOKIE, POSITION_HEADER

from ..launchers import launch
from ..support import Gunicorn, Reply, Serve, fan_out, until
from .checks import rows_everywhere, served_ports, writing_on


def replica_env(cluster: Cluster, max_lag: float) -> dict[str, str]:
    """What ``replica_app`` reads to build its application over ``cluster``."""
    return {
        "PRIMARY_URL": cluster.primary.url,
        "REPLICA_URLS": " ".join(r.url for r in cluster.replicas),
        "REPLICA_BACKOFF": "0.5",
        "REPLICA_MAX_LAG": str(max_lag),
    }


def serve_replica_app(
    gunicorn: Serve, cluster: Cluster, *, preload: bool = False, max_lag: float = 30
) -> Gunicorn:
    return gunicorn(
        "replicas.replica_app:app",
        database=cluster.primary.url,
        worker_class="gthread",
        workers=2,
        threads=4,
        preload=preload,
        env=replica_env(cluster, max_lag),
    )


@contextmanager
def uwsgi_serving_replica_app(
    cluster: Cluster, log_dir: Path, max_lag: float
) -> Iterator[Gunicorn]:
    """uWSGI's default mode, two processes: the master imports the app, then forks them from C."""
    server = launch(
        "uwsgi", "replicas.replica_app:app", env=replica_env(cluster, max_lag), log_dir=log_dir
    )
    try:
        yield server
    finally:
        problems = server.stop()
        assert not problems, "\n\n".join(problems)


@pytest.fixture
def server(gunicorn: Serve, cluster: Cluster) -> Gunicorn:
    return serve_replica_app(gunicorn, cluster)


class Client:
    """An HTTP client that keeps the position token, in a cookie or in the header."""

    def __init__(self, server: Gunicorn, carrier: str = "cookie") -> None:
        self.server = server
        self.carrier = carrier
        self.token = ""

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        headers = {}
        if self.token:
            if self.carrier == "cookie":
                headers["Cookie"] = f"{POSITION_COOKIE}={self.token}"
            else:
                headers[POSITION_HEADER] = self.token
        reply = self.server.request(method, path, body, headers)
        if POSITION_HEADER in reply.headers:
            self.token = reply.headers[POSITION_HEADER]
        return reply

    def json(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        reply = self.request(method, path, body)
        return reply.status, reply.json()


def test_gets_go_to_replicas_and_posts_to_the_primary(server: Gunicorn, cluster: Cluster) -> None:
    client = Client(server)
    reads = [client.json("GET", "/where") for _ in range(10)]
    assert all(status == 200 and answer["replica"] for status, answer in reads)
    status, created = Client(server).json("POST", "/items", b"ann")
    assert (status, created["port"], created["replica"]) == (201, cluster.primary.port, False)


@pytest.mark.parametrize("carrier", ["cookie", "header"])
def test_a_client_reads_its_own_writes_through_a_lagging_replica(
    server: Gunicorn, cluster: Cluster, carrier: str
) -> None:
    for replica in cluster.replicas:
        replica.set_delay(1)
    writer, stranger = Client(server, carrier), Client(server)
    tries, misses, stranger_on_replica, stranger_misses = 200, 0, 0, 0
    for attempt in range(tries):
        status, created = writer.json("POST", "/items", f"row {attempt}".encode())
        assert status == 201
        status, _mine = writer.json("GET", f"/items/{created['id']}")
        misses += status != 200
        status, other = stranger.json("GET", f"/items/{created['id']}")
        assert status in (200, 404)
        stranger_on_replica += other["replica"]
        stranger_misses += status == 404
    print(
        f"\n{cluster.kind} over HTTP ({carrier}): {misses} misses in {tries} tries; "
        f"without the token {stranger_misses} misses"
    )
    assert misses == 0
    assert stranger_on_replica == tries
    # The control: the same reads without the token do miss.
    assert stranger_misses > tries // 2


def test_a_stopped_replica_costs_no_5xx_and_is_used_after_it_restarts(
    server: Gunicorn, cluster: Cluster
) -> None:
    client = Client(server)
    stopped, _other = cluster.replicas
    for _ in range(8):
        client.json("GET", "/where")
    stopped.stop()
    statuses = [client.request("GET", "/where").status for _ in range(30)]
    assert statuses == [200] * 30
    stopped.start()
    deadline = time.monotonic() + 20
    ports: set[int] = set()
    while stopped.port not in ports:
        assert time.monotonic() < deadline, "the restarted replica was not used again"
        status, answer = client.json("GET", "/where")
        assert status == 200
        ports.add(answer["port"])
        time.sleep(0.05)


def test_a_get_that_writes_gets_a_500_naming_use_primary_and_writes_nothing(
    server: Gunicorn, cluster: Cluster
) -> None:
    reply = Client(server).request("GET", "/items?write=bob")
    assert reply.status == 500
    assert "use_primary()" in server.log.read_text()
    assert rows_everywhere(cluster) == {"primary": 0, "replica0": 0, "replica1": 0}
    status, created = Client(server).json("GET", "/items?write=bob&primary=1")
    assert (status, created["port"]) == (201, cluster.primary.port)


def test_a_failed_commit_answers_500_with_no_token_and_writes_nothing(
    server: Gunicorn, cluster: Cluster
) -> None:
    reply = Client(server).request("POST", "/fail-commit", b"")
    assert reply.status == 500
    assert POSITION_HEADER not in reply.headers
    assert "Set-Cookie" not in reply.headers
    assert rows_everywhere(cluster) == {"primary": 0, "replica0": 0, "replica1": 0}


@pytest.mark.parametrize(
    "served_by",
    [
        pytest.param("gunicorn", id="app-per-worker"),
        pytest.param("gunicorn --preload", id="preload"),
        # No --lazy-apps, no --enable-threads: the monitor's thread must run anyway.
        pytest.param("uwsgi", id="uwsgi-prefork"),
    ],
)
def test_a_replica_behind_the_lag_bound_serves_no_read_in_any_worker(
    gunicorn: Serve, cluster: Cluster, tmp_path: Path, served_by: str
) -> None:
    with ExitStack() as stack:
        if served_by == "uwsgi":
            server = stack.enter_context(uwsgi_serving_replica_app(cluster, tmp_path, max_lag=1))
        else:
            server = serve_replica_app(
                gunicorn, cluster, preload=served_by.endswith("--preload"), max_lag=1
            )
        # A worker starts measuring at its first routed request (a preloading
        # master serves none, so it never measures and never forks mid-measure).
        pids: set[int] = set()

        def every_worker_served() -> bool:
            pids.update(answer["pid"] for answer in fan_out(server, "/pid", 8, 4))
            return len(pids) == 2

        assert until(every_worker_served)
        fast, slow = cluster.replicas
        slow.set_delay(3)
        with writing_on(cluster):
            time.sleep(3)  # 2-3 s behind from now on; every worker has measured it
            ports = served_ports(lambda: Client(server).json("GET", "/where")[1], 40)
        assert ports == {fast.port}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("x" * 5000, id="huge"),
        pytest.param("1.1.0/0.-", id="expired"),
        pytest.param("1.99999999999.0/0.-", id="future"),
    ],
)
@pytest.mark.parametrize("carrier", ["cookie", "header"])
def test_a_forged_token_is_ignored(server: Gunicorn, token: str, carrier: str) -> None:
    client = Client(server, carrier)
    client.token = token
    status, answer = client.json("GET", "/where")
    assert (status, answer["replica"]) == (200, True)
