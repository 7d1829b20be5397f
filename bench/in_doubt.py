"""What resolve_in_doubt() costs a request: statements and time, in process.

Usage::

    python bench/in_doubt.py [URL] [--rounds N] [--batch N]

Without a URL it measures ``$WSGI_SQLA_POSTGRESQL_URL`` (PostgreSQL only).
Two engines on the same database, one with :func:`wsgi_sqla.resolve_in_doubt`
and one without, serve the same requests through ``SessionMiddleware`` around
a bare WSGI application: one that inserts one row, and one that reads one.
Requests are called directly (no server), each timed alone with
``time.perf_counter_ns``; rounds alternate a batch of each system, the order
rotating, so a slow spell of the shared machine falls on both. Figures are
the median and quartiles per request in µs, and the paired excess: per round,
the batch median with the option minus the batch median without, the median
of those. Statements per request come from
:func:`wsgi_sqla.testing.count_round_trips`.

It writes the table docs/in-doubt.rst includes to ``bench/in_doubt.rst``
(``--output``). The table it uses is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from werkzeug.test import EnvironBuilder

from wsgi_sqla import SessionMiddleware, resolve_in_doubt
from wsgi_sqla.testing import count_round_trips

metadata = MetaData()
rows = Table(
    "bench_in_doubt",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tag", String(40), nullable=False),
)

App = Callable[..., Any]


def _apps(engine: Engine) -> dict[str, App]:
    db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))

    def inserting(environ: Any, start_response: Any) -> list[bytes]:
        db.execute(insert(rows).values(tag="bench"))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"created"]

    def reading(environ: Any, start_response: Any) -> list[bytes]:
        db.execute(select(rows.c.id).limit(1)).all()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    return {
        "insert one row": SessionMiddleware(inserting, db),
        "read one row": SessionMiddleware(reading, db),
    }


def _call(app: App, environ: dict[str, Any]) -> None:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    body = app(dict(environ), start_response)
    for _chunk in body:
        pass
    body.close()


def _measure(url: str, rounds: int, batch: int) -> list[list[str]]:
    direct = create_engine(url)
    metadata.drop_all(direct)
    metadata.create_all(direct)
    builder = EnvironBuilder(path="/", method="POST")
    environ = builder.get_environ()
    builder.close()
    systems = {"off": create_engine(url), "resolve_in_doubt": resolve_in_doubt(create_engine(url))}
    apps = {name: _apps(engine) for name, engine in systems.items()}
    table = []
    try:
        for request in ("insert one row", "read one row"):
            statements = {}
            for name, engine in systems.items():
                for _ in range(50):  # warm-up: pools, compiled caches
                    _call(apps[name][request], environ)
                with count_round_trips(engine) as counts:
                    for _ in range(20):
                        _call(apps[name][request], environ)
                statements[name] = counts.statements / 20
            samples: dict[str, list[int]] = {name: [] for name in systems}
            excess = []
            order = list(systems)
            for number in range(rounds):
                medians = {}
                for name in order if number % 2 == 0 else reversed(order):
                    batch_ns = []
                    for _ in range(batch):
                        start = time.perf_counter_ns()
                        _call(apps[name][request], environ)
                        batch_ns.append(time.perf_counter_ns() - start)
                    samples[name].extend(batch_ns)
                    medians[name] = statistics.median(batch_ns)
                excess.append(medians["resolve_in_doubt"] - medians["off"])
            for name in systems:
                q1, median, q3 = statistics.quantiles(samples[name], n=4)
                table.append(
                    [
                        request,
                        name,
                        f"{statements[name]:g}",
                        f"{median / 1000:.1f}",
                        f"{q1 / 1000:.1f}-{q3 / 1000:.1f}",
                        "" if name == "off" else f"{statistics.median(excess) / 1000:+.1f}",
                    ]
                )
    finally:
        for engine in systems.values():
            engine.dispose()
        metadata.drop_all(direct)
        direct.dispose()
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url", nargs="?", help="default: $WSGI_SQLA_POSTGRESQL_URL")
    parser.add_argument("--rounds", type=int, default=100, help="rounds (default 100)")
    parser.add_argument("--batch", type=int, default=20, help="requests per batch (default 20)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().with_name("in_doubt.rst"),
        help="the table for docs/in-doubt.rst (default: bench/in_doubt.rst)",
    )
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("WSGI_SQLA_POSTGRESQL_URL", "")
    if not url:
        parser.error("give a PostgreSQL URL or set WSGI_SQLA_POSTGRESQL_URL")
    load = os.getloadavg()
    table = _measure(url, args.rounds, args.batch)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        ".. Written by python bench/in_doubt.py; do not edit by hand.",
        "",
        ".. csv-table::",
        '   :header: "request", "engine", "statements", "median µs", "IQR µs", "paired excess µs"',
        "",
        *("   " + ", ".join(f'"{cell}"' for cell in row) for row in table),
        "",
        f"Measured {when}: PostgreSQL on 127.0.0.1, in process, {args.rounds} rounds of "
        f"{args.batch} requests per engine ({args.rounds * args.batch} samples each); "
        f"{os.cpu_count()} logical cores, load average {load[0]:.2f} at start.",
        "",
    ]
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
