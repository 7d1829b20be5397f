"""Replica routing in the telemetry: the route and the token on the unit span, the lag gauge.

On a real primary with two streaming replicas (PostgreSQL and MariaDB), the
same app as the routing tests: each request's ``wsgi_sqla.unit`` span says
where it ran and what became of the client's position token, the routed
units are counted by route, and the lag monitor's measurements are a gauge
per replica.
"""

from __future__ import annotations

from typing import Any

import webtest
from telemetry.recorded import Recorded, attributes, key

from harness.clusters import Cluster
from wsgi_sqla import POSITION_COOKIE

from ..support import until
from .checks import app_over
from .replica_app import App


def routed(telemetry: Recorded) -> list[tuple[Any, Any, Any]]:
    """(route, token, outcome) of each finished unit span, in order."""
    return [
        (a.get("wsgi_sqla.route"), a.get("wsgi_sqla.token"), a["wsgi_sqla.outcome"])
        for a in map(attributes, telemetry.units())
    ]


def test_a_write_runs_on_the_primary_and_issues_a_token(app: App, telemetry: Recorded) -> None:
    webtest.TestApp(app.wsgi).post("/items", "ann", status=201)

    assert routed(telemetry) == [("primary", "issued", "committed")]


def test_a_read_without_token_runs_on_a_replica(app: App, telemetry: Recorded) -> None:
    webtest.TestApp(app.wsgi).get("/where", status=200)

    assert routed(telemetry) == [("replica", None, "committed")]


def test_the_token_is_kept_then_dropped_once_every_replica_has_the_write(
    app: App, cluster: Cluster, telemetry: Recorded
) -> None:
    client = webtest.TestApp(app.wsgi)
    item = client.post("/items", "ann", status=201).json["id"]
    cluster.wait_caught_up()
    for _ in range(4):
        client.get(f"/items/{item}", status=200)
        if POSITION_COOKIE not in client.cookies:
            break

    seen = routed(telemetry)
    assert seen[0] == ("primary", "issued", "committed")
    assert seen[-1] == ("replica", "dropped", "committed")
    assert all(token == "kept" for _, token, _ in seen[1:-1]), seen


def test_routed_units_are_counted_by_route(app: App, telemetry: Recorded) -> None:
    client = webtest.TestApp(app.wsgi)
    client.post("/items", "ann", status=201)
    client.reset()  # no token: the reads may go to a replica
    for _ in range(3):
        client.get("/where", status=200)
    client.get("/nothing", status=200)  # no statement: no route

    assert telemetry.metrics()["wsgi_sqla.replicas.routed"] == {
        key(wsgi_sqla__route="primary"): 1,
        key(wsgi_sqla__route="replica"): 3,
    }


def test_each_replica_lag_is_a_gauge(cluster: Cluster, telemetry: Recorded) -> None:
    with app_over(cluster, max_lag=30) as lagged:
        webtest.TestApp(lagged.wsgi).get("/where", status=200)  # starts the lag monitor
        labels = {replica.url.render_as_string(hide_password=True) for replica in lagged.replicas}
        found: dict[str, Any] = {}

        def measured() -> bool:
            points = telemetry.metrics().get("wsgi_sqla.replicas.lag", {})
            found.update({dict(k)["wsgi_sqla.replica"]: v for k, v in points.items()})
            return labels <= set(found)

        assert until(measured), found
    assert all(0 <= found[label] < 30 for label in labels), found
