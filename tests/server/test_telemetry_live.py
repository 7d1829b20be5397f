"""The live check of issue 22: the Flask example under gunicorn, traced end to end.

examples/flask_app.py runs under a real gunicorn (two sync workers) wrapped
in opentelemetry-instrumentation-wsgi's middleware, with the SDK exporting
every span to a file. Each HTTP request must give exactly one server span,
exactly one ``wsgi_sqla.unit`` span nested under it with the outcome the
request had, COMMIT or ROLLBACK spans nested under the unit, and no span
whose parent is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from support import database_url

from .support import Gunicorn, load_module, servers

pytest.importorskip("opentelemetry.instrumentation.wsgi", reason="pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]

#: (method, path, JSON body, expected status, expected outcome, expected reason)
REQUESTS: list[tuple[str, str, Any, int, str, str]] = [
    ("POST", "/users", {"name": "ann"}, 201, "committed", "status"),
    ("GET", "/users/1", None, 200, "committed", "status"),
    ("GET", "/users/999", None, 404, "rolled_back", "status"),
    ("POST", "/users", {"name": "ann"}, 409, "rolled_back", "status"),
    ("POST", "/users/1/fail", None, 500, "rolled_back", "status"),
    ("GET", "/users", None, 200, "committed", "status"),
]


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def traced(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Gunicorn, Path]]:
    url = database_url(request.param, tmp_path)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    load_module(ROOT / "examples" / "models.py", url).engine.dispose()  # creates the table
    spans = tmp_path / "spans.jsonl"
    with servers(tmp_path) as serve:
        server = serve(
            "telemetry_app:app",
            database=url,
            workers=2,
            env={"WSGI_SQLA_SPANS": str(spans), "OTEL_SERVICE_NAME": "wsgi_sqla_example"},
        )
        yield server, spans
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS example_users"))
    engine.dispose()


def test_each_request_is_one_unit_span_under_its_server_span_and_no_orphan(
    traced: tuple[Gunicorn, Path],
) -> None:
    server, path = traced
    for method, target, body, status, _outcome, _reason in REQUESTS:
        reply = (
            server.post_json(target, body)
            if method == "POST" and body is not None
            else server.request(method, target)
        )
        assert reply.status == status, (method, target, reply.body)
    server.stop()  # every worker has exported its spans once it exited

    spans = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {span["context"]["span_id"]: span for span in spans}
    orphans = [s["name"] for s in spans if s["parent_id"] and s["parent_id"] not in by_id]
    assert orphans == []
    roots = [s for s in spans if s["parent_id"] is None]
    assert all(s["kind"] == "SpanKind.SERVER" for s in roots), [s["name"] for s in roots]
    assert len(roots) == len(REQUESTS)

    seen = []
    for root in sorted(roots, key=lambda s: s["start_time"]):
        units = [s for s in spans if s["parent_id"] == root["context"]["span_id"]]
        assert [s["name"] for s in units] == ["wsgi_sqla.unit"], root["name"]
        unit = units[0]
        assert unit["context"]["trace_id"] == root["context"]["trace_id"]
        attributes = unit["attributes"]
        seen.append(
            (
                attributes["http.response.status_code"],
                attributes["wsgi_sqla.outcome"],
                attributes["wsgi_sqla.reason"],
            )
        )
        operations = [s["name"] for s in spans if s["parent_id"] == unit["context"]["span_id"]]
        expected = "COMMIT" if attributes["wsgi_sqla.outcome"] == "committed" else "ROLLBACK"
        assert operations == [expected], (root["name"], operations)
    assert seen == [(status, outcome, reason) for *_, status, outcome, reason in REQUESTS]
