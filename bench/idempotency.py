"""``python -m bench --idempotency``: what an Idempotency-Key costs a POST.

A bare WSGI application inserts one row (``bench_keyed_items``) and answers
201. Four kinds of request, each called in process (no server, no socket)
as :mod:`bench.inprocess` does:

``unkeyed, keys off``
    ``SessionMiddleware(app, db)``: the lower bound;
``unkeyed, keys on``
    ``SessionMiddleware(app, db, idempotency=IdempotencyKeys())``, a POST
    without the header: must cost the same (0 extra round trips);
``keyed, first``
    the same with a new key each time: the claim (its own short
    transaction), the run, the record in the request's transaction;
``keyed, replay``
    a repeat of a committed key: the stored response, the app not run.

The kinds take turns in every round (rotating order), each round times a
batch of each, and the figure is the median over every request; the ratio
is paired by round against the lower bound. Round trips are counted with
:func:`wsgi_sqla.testing.count_round_trips` on one request of each kind.
Writes ``bench/idempotency.rst`` (docs/benchmarks.rst includes it).
"""

from __future__ import annotations

import io
import itertools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla import IdempotencyKeys, SessionMiddleware
from wsgi_sqla.testing import count_round_trips

__all__ = ["KINDS", "main", "measure", "table"]

KINDS = ["unkeyed, keys off", "unkeyed, keys on", "keyed, first", "keyed, replay"]
_metadata = MetaData()
_items = Table(
    "bench_keyed_items",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40), nullable=False),
)


def _environ(key: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/items",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "4",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b"item"),
        "wsgi.url_scheme": "http",
    }
    if key is not None:
        environ["HTTP_IDEMPOTENCY_KEY"] = key
    return environ


def _call(app: Any, environ: dict[str, Any]) -> str:
    statuses: list[str] = []

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    body = app(environ, start_response)
    try:
        for _chunk in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses[-1]


def measure(url: str, rounds: int, batch: int) -> tuple[str, dict[str, dict[str, Any]]]:
    """Each kind on the database at ``url``: median µs, paired ratio, round trips."""
    engine = create_engine(url)
    db: scoped_session[Any] = scoped_session(sessionmaker(bind=engine))
    keys = IdempotencyKeys()
    for metadata in (_metadata, keys.metadata):
        metadata.drop_all(engine)
        metadata.create_all(engine)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        db.execute(insert(_items).values(name=environ["wsgi.input"].read(4).decode()))
        start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    plain = SessionMiddleware(app, db)
    configured = SessionMiddleware(app, db, idempotency=keys)
    fresh = (f'"k{n}"' for n in itertools.count())
    _call(configured, _environ('"replayed"'))
    requests: dict[str, Callable[[], str]] = {
        KINDS[0]: lambda: _call(plain, _environ(None)),
        KINDS[1]: lambda: _call(configured, _environ(None)),
        KINDS[2]: lambda: _call(configured, _environ(next(fresh))),
        KINDS[3]: lambda: _call(configured, _environ('"replayed"')),
    }
    results: dict[str, dict[str, Any]] = {}
    for kind, request in requests.items():
        request()  # warm: connections, statement caches
        with count_round_trips(engine) as trips:
            assert request()[:3] == "201", kind
        results[kind] = {"trips": trips, "times": [], "medians": []}
    for index in range(rounds):
        order = KINDS[index % 4 :] + KINDS[: index % 4]
        for kind in order:
            times = []
            for _ in range(batch):
                start = time.perf_counter_ns()
                requests[kind]()
                times.append((time.perf_counter_ns() - start) / 1000)
            results[kind]["times"].extend(times)
            results[kind]["medians"].append(statistics.median(times))
    base = results[KINDS[0]]["medians"]
    for result in results.values():
        result["ratio"] = statistics.median(
            m / b for m, b in zip(result["medians"], base, strict=True)
        )
    with engine.connect() as connection:
        version = ".".join(map(str, connection.dialect.server_version_info or ()))
    for metadata in (_metadata, keys.metadata):
        metadata.drop_all(engine)
    engine.dispose()
    return f"{engine.dialect.name} {version}", results


def _csv(cells: list[str]) -> str:
    return ", ".join(f'"{cell}"' for cell in cells)


def table(measured: list[tuple[str, dict[str, dict[str, Any]]]]) -> str:
    """The results as a reStructuredText csv-table."""
    header = [
        "database",
        "request",
        "µs (median)",
        "vs unkeyed, keys off",
        "round trips",
        "statements",
    ]
    lines = [".. csv-table::", f"   :header: {_csv(header)}", ""]
    for database, results in measured:
        for kind in KINDS:
            result = results[kind]
            trips = result["trips"]
            total = trips.statements + trips.begin + trips.commit + trips.rollback
            row = [
                database,
                kind,
                f"{statistics.median(result['times']):.0f}",
                f"{result['ratio']:.2f}",
                f"{total} ({trips.checkouts} checkouts)",
                str(trips.statements),
            ]
            lines.append(f"   {_csv(row)}")
    return "\n".join(lines)


def main(urls: dict[str, str], rounds: int, batch: int, output: Path) -> None:
    """Measure on every database of ``urls``, print and write the table."""
    measured = [measure(url, rounds, batch) for url in urls.values()]
    text = ".. Written by python -m bench --idempotency (bench/idempotency.py); do not edit.\n\n"
    text += table(measured)
    text += (
        "\n\n"
        f"In process, {rounds} rounds of {batch} requests of each kind taking turns; "
        "round trips: statements plus BEGIN/COMMIT/ROLLBACK of one request, pool checkouts "
        "in brackets. Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{load:.1f}" for load in os.getloadavg())
        + ".\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
