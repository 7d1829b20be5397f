"""Read replicas, in process: routing per request, read-your-writes, health, tokens, cost.

Every test runs on PostgreSQL and on MariaDB (the ``cluster`` fixture), each a
real primary with two real streaming replicas. Which server answered is
asked of the server inside the request (its port, ``pg_is_in_recovery()`` /
``@@read_only``), never taken from the router; what was written is counted
through the test's own connections.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import webtest
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

import wsgi_sqla
from harness.clusters import Cluster
from wsgi_sqla import (
    POSITION_COOKIE,
    POSITION_HEADER,
    Replicas,
    ReplicaWriteError,
    SessionMiddleware,
)

from ..support import until
from .checks import (
    app_over,
    client_connection_ids,
    counting_all,
    ports_reading_a_commit_held_unapplied,
    rows_everywhere,
    served_ports,
    writing_on,
)
from .replica_app import App, CommitRefused, make_app


def replica_ports(cluster: Cluster) -> set[int]:
    return {r.port for r in cluster.replicas}


def token_of(response: Any) -> str:
    return str(response.headers[POSITION_HEADER])


def set_cookies(response: Any) -> list[str]:
    return [str(v) for v in response.headers.getall("Set-Cookie")]


# -- routing --------------------------------------------------------------------


def test_gets_are_served_by_the_replicas(app: App, cluster: Cluster) -> None:
    client = webtest.TestApp(app.wsgi)
    answers = [client.get("/where").json for _ in range(10)]
    assert all(a["replica"] for a in answers)
    assert {a["port"] for a in answers} == replica_ports(cluster)


def test_posts_are_served_by_the_primary(app: App, cluster: Cluster) -> None:
    client = webtest.TestApp(app.wsgi)
    created = client.post("/items", "ann", status=201).json
    assert created["replica"] is False
    assert created["port"] == cluster.primary.port
    assert rows_everywhere(cluster) == {"primary": 1, "replica0": 1, "replica1": 1}


def test_use_primary_sends_a_get_to_the_primary(app: App, cluster: Cluster) -> None:
    answer = webtest.TestApp(app.wsgi).get("/where?primary=1").json
    assert answer == {"port": cluster.primary.port, "replica": False}


def test_a_get_that_writes_on_a_replica_fails_clearly_and_writes_nothing(
    app: App, cluster: Cluster
) -> None:
    with pytest.raises(ReplicaWriteError, match=r"routed to a read replica.*use_primary\(\)"):
        webtest.TestApp(app.wsgi).get("/items?write=bob")
    assert rows_everywhere(cluster) == {"primary": 0, "replica0": 0, "replica1": 0}


def test_a_get_that_writes_after_use_primary_commits_on_the_primary(
    app: App, cluster: Cluster
) -> None:
    created = webtest.TestApp(app.wsgi).get("/items?write=bob&primary=1", status=201).json
    assert created["port"] == cluster.primary.port
    assert rows_everywhere(cluster) == {"primary": 1, "replica0": 1, "replica1": 1}


def test_use_primary_after_a_replica_query_raises(cluster: Cluster) -> None:
    primary = create_engine(cluster.primary.url)
    replica = create_engine(cluster.replicas[0].url)
    db: scoped_session[Any] = scoped_session(sessionmaker(bind=primary))
    seen: list[BaseException] = []

    def late(environ: Any, start_response: Any) -> list[bytes]:
        db.connection()
        try:
            wsgi_sqla.use_primary()
        except RuntimeError as error:
            seen.append(error)
        start_response("200 OK", [])
        return [b""]

    try:
        webtest.TestApp(SessionMiddleware(late, db, replicas=Replicas({db: [replica]}))).get("/")
    finally:
        primary.dispose()
        replica.dispose()
    assert len(seen) == 1
    assert str(seen[0]).startswith("use_primary(): ")


# -- read-your-writes -------------------------------------------------------------


@pytest.mark.parametrize("carrier", [pytest.param("cookie"), pytest.param("header")])
def test_a_client_reads_its_own_write_through_a_lagging_replica(
    app: App, cluster: Cluster, carrier: str
) -> None:
    for replica in cluster.replicas:
        replica.set_delay(1)
    writer = webtest.TestApp(app.wsgi)
    stranger = webtest.TestApp(app.wsgi)
    tries, misses, stranger_misses = 200, 0, 0
    for attempt in range(tries):
        created = writer.post("/items", f"row {attempt}", status=201)
        item = created.json["id"]
        headers = {}
        if carrier == "header":
            headers = {POSITION_HEADER: token_of(created)}
            writer.reset()  # no cookie: only the header carries the position
        mine = writer.get(f"/items/{item}", headers=headers, expect_errors=True)
        misses += mine.status_int != 200
        other = stranger.get(f"/items/{item}", expect_errors=True)
        assert other.json["replica"] is True
        stranger_misses += other.status_int == 404
    assert misses == 0, f"{misses} of {tries} reads missed the client's own write"
    # The control: without the token the same read goes to the lagging replica and misses.
    assert stranger_misses > tries // 2


def test_once_every_replica_caught_up_the_token_is_dropped(app: App, cluster: Cluster) -> None:
    client = webtest.TestApp(app.wsgi)
    item = client.post("/items", "ann", status=201).json["id"]
    cluster.wait_caught_up()
    answers = []
    for _ in range(4):
        answers.append(client.get(f"/items/{item}"))
        if POSITION_COOKIE not in client.cookies:
            break
    assert all(a.json["replica"] for a in answers)
    assert f"{POSITION_COOKIE}=; Max-Age=0" in set_cookies(answers[-1])[0]
    assert client.get(f"/items/{item}").json["replica"] is True


def test_the_token_is_kept_while_one_replica_still_lags(app: App, cluster: Cluster) -> None:
    fast, slow = cluster.replicas
    slow.set_delay(3)
    client = webtest.TestApp(app.wsgi)
    item = client.post("/items", "ann", status=201).json["id"]
    deadline = time.monotonic() + 2
    served = set()
    while time.monotonic() < deadline:
        answer = client.get(f"/items/{item}")
        assert answer.status_int == 200
        assert not any("Max-Age=0" in c for c in set_cookies(answer)), "dropped while one lags"
        served.add(answer.json["port"])
    assert slow.port not in served
    assert fast.port in served


def test_no_token_after_a_rollback(app: App) -> None:
    response = webtest.TestApp(app.wsgi).post("/fail", "", status=409)
    assert set_cookies(response) == []
    assert POSITION_HEADER not in response.headers


def test_a_failed_commit_answers_500_writes_nothing_and_issues_no_token(
    app: App, cluster: Cluster
) -> None:
    answers: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answers.append((status, headers))
        return lambda data: None

    environ = webtest.TestRequest.blank("/fail-commit", method="POST").environ
    body = app.wsgi(environ, start_response)
    with pytest.raises(CommitRefused):
        body.close()
    [(status, headers)] = answers
    assert status.startswith("500 ")
    assert [name for name, _ in headers if name in ("Set-Cookie", POSITION_HEADER)] == []
    assert rows_everywhere(cluster) == {"primary": 0, "replica0": 0, "replica1": 0}


def test_no_token_after_a_post_that_wrote_nothing(app: App) -> None:
    response = webtest.TestApp(app.wsgi).post("/where", "")
    assert response.json["replica"] is False
    assert set_cookies(response) == []


# -- health ---------------------------------------------------------------------


def test_a_stopped_replica_is_skipped_and_used_again_after_it_restarts(
    app: App, cluster: Cluster
) -> None:
    client = webtest.TestApp(app.wsgi)
    stopped, other = cluster.replicas
    client.get("/where")  # both pools hold a connection now
    client.get("/where")
    stopped.stop()
    answers = [client.get("/where", expect_errors=True) for _ in range(10)]
    assert [a.status_int for a in answers] == [200] * 10
    assert {a.json["port"] for a in answers} == {other.port}
    stopped.start()
    # Once its back-off (0.5 s here) is over and the lag monitor saw it replicating
    # again: a restarted MariaDB replica reports no lag (NULL) until it reconnects.
    assert until(
        lambda: served_ports(lambda: client.get("/where").json, 10) == replica_ports(cluster)
    )


def test_with_every_replica_stopped_reads_go_to_the_primary(app: App, cluster: Cluster) -> None:
    client = webtest.TestApp(app.wsgi)
    client.get("/where")
    for replica in cluster.replicas:
        replica.stop()
    answers = [client.get("/where").json for _ in range(3)]
    assert answers == [{"port": cluster.primary.port, "replica": False}] * 3


@pytest.mark.parametrize(
    ("max_lag", "lagging_replica_serves"),
    [pytest.param(1.0, False, id="bound-1s"), pytest.param(None, True, id="no-bound-control")],
)
def test_a_replica_further_behind_than_the_bound_serves_no_read(
    cluster: Cluster, max_lag: float | None, lagging_replica_serves: bool
) -> None:
    fast, slow = cluster.replicas
    with app_over(cluster, max_lag=max_lag) as built:
        client = webtest.TestApp(built.wsgi)
        client.get("/nothing")  # the first unit starts the lag monitor
        slow.set_delay(3)
        with writing_on(cluster):
            time.sleep(3)  # 2-3 s behind from now on (MariaDB counts whole seconds)
            ports = served_ports(lambda: client.get("/where").json, 20)
        assert (slow.port in ports) is lagging_replica_serves
        assert fast.port in ports
        if max_lag is not None:
            # Back within the bound once it caught up: served again, no restart needed.
            slow.set_delay(0)
            cluster.wait_caught_up()
            assert until(lambda: slow.port in served_ports(lambda: client.get("/where").json, 4))


def test_the_lag_measurement_costs_requests_nothing(cluster: Cluster) -> None:
    with app_over(cluster, max_lag=0.2) as built:
        client = webtest.TestApp(built.wsgi)
        client.get("/where")
        client.get("/where")
        with counting_all(built.primary, built.replicas) as (primary, replicas):
            time.sleep(1)  # the monitor measures every 0.05 s here
            client.get("/where")
    assert (primary.checkouts, primary.statements) == (0, 0)
    assert (replicas.checkouts, replicas.statements) == (1, 1)


@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)
def test_a_commit_received_after_a_quiet_spell_leaves_the_replica_within_the_bound(
    cluster: Cluster,
) -> None:
    # PostgreSQL reports only when the last commit it replayed was made: after
    # 3 quiet seconds, a commit received but not yet applied read as 3 s behind.
    ports = ports_reading_a_commit_held_unapplied(cluster, max_lag=1.0, held=0.3)
    assert ports == replica_ports(cluster)  # the monitor measured within the 0.3 s


@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)
def test_a_replica_that_stops_applying_leaves_once_its_backlog_is_older_than_the_bound(
    cluster: Cluster,
) -> None:
    ports = ports_reading_a_commit_held_unapplied(cluster, max_lag=1.0, held=1.8)
    assert ports == {cluster.primary.port}


def test_the_lag_monitor_lets_go_of_its_connections_with_the_middleware(cluster: Cluster) -> None:
    # Every replica's, not only one: the monitor's thread measures them in the
    # order of a set (by address), so a reference it kept to the last one
    # measured held a replica that only some runs checked.
    before = [client_connection_ids(replica) for replica in cluster.replicas]

    def new_connections() -> list[set[int]]:
        return [
            client_connection_ids(replica) - seen
            for replica, seen in zip(cluster.replicas, before, strict=True)
        ]

    built = make_app(cluster.primary.url, [r.url for r in cluster.replicas], max_lag=0.2)
    webtest.TestApp(built.wsgi).get("/nothing")  # the first unit starts the lag monitor
    assert until(lambda: [len(new) for new in new_connections()] == [1] * len(before))
    monitors = new_connections()  # the monitor's own, one per replica
    del built  # no collection needed: nothing holds the router in a cycle
    assert until(
        lambda: all(not (m & now) for m, now in zip(monitors, new_connections(), strict=True)),
        timeout=5,
    )


# -- tokens ------------------------------------------------------------------------
# Forged and malformed tokens: tests/replicas/test_tokens.py (no database needed).


def test_an_unsigned_app_treats_a_far_ahead_token_as_go_to_the_primary(
    app: App, cluster: Cluster
) -> None:
    client = webtest.TestApp(app.wsgi)
    genuine = token_of(client.post("/items", "ann", status=201))
    _v, issued, _position, sig = genuine.split(".")
    ahead = "7FFFFFFF/0" if cluster.kind == "postgresql" else "0-1-99999999999"
    answer = webtest.TestApp(app.wsgi).get(
        "/where", headers={POSITION_HEADER: f"1.{issued}.{ahead}.{sig}"}
    )
    assert answer.json == {"port": cluster.primary.port, "replica": False}


# -- cost -------------------------------------------------------------------------


def test_a_request_that_never_touches_the_database_costs_nothing(app: App) -> None:
    client = webtest.TestApp(app.wsgi)
    client.post("/items", "ann", status=201)  # a token, so the request carries one
    with counting_all(app.primary, app.replicas) as (primary, replicas):
        client.get("/nothing")
    assert vars(primary) == vars(replicas) == {
        "statements": 0, "begin": 0, "commit": 0, "rollback": 0, "checkouts": 0, "resets": 0
    }  # fmt: skip


def test_a_read_without_a_token_costs_only_its_own_statement(app: App) -> None:
    client = webtest.TestApp(app.wsgi)
    client.get("/where")  # connections exist
    client.get("/where")
    with counting_all(app.primary, app.replicas) as (primary, replicas):
        client.get("/where")
    assert primary.checkouts == primary.statements == 0
    assert (replicas.checkouts, replicas.statements, replicas.begin, replicas.commit) == (
        1,
        1,
        1,
        1,
    )


def test_a_read_with_a_token_costs_one_statement_more(app: App, cluster: Cluster) -> None:
    client = webtest.TestApp(app.wsgi)
    client.post("/items", "ann", status=201)
    cluster.wait_caught_up()
    with counting_all(app.primary, app.replicas) as (primary, replicas):
        client.get("/where")
    assert primary.checkouts == primary.statements == 0
    # the replica's position, then the view's own statement
    assert (replicas.checkouts, replicas.statements, replicas.begin, replicas.commit) == (
        1,
        2,
        1,
        1,
    )


def test_a_committing_write_costs_one_statement_more(app: App) -> None:
    client = webtest.TestApp(app.wsgi)
    with counting_all(app.primary, app.replicas) as (primary, replicas):
        client.post("/items", "ann", status=201)
    assert replicas.checkouts == replicas.statements == 0
    # INSERT and the view's own SELECT, then the primary's position after COMMIT
    assert (primary.checkouts, primary.statements) == (1, 3)


# -- the middleware itself -------------------------------------------------------------


def test_requests_are_routed_with_retries_on_too(cluster: Cluster) -> None:
    with app_over(cluster, retries=2) as built:
        answer = webtest.TestApp(built.wsgi).get("/where").json
    assert answer["replica"] is True
