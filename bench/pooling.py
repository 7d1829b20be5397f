"""``python -m bench --pooling``: the connection budget, direct and through PgBouncer.

The same Flask + :class:`~wsgi_sqla.SessionMiddleware` application (reads of
one row and inserts of one row, four reads to one write) served by
``gunicorn --worker-class gthread --workers 4 --threads 8`` in three
configurations, side by side in one run:

``direct``
    straight to PostgreSQL, SQLAlchemy's default ``QueuePool`` in each
    worker (each worker opens as many connections as it has busy threads);
``pgbouncer``
    through a PgBouncer of our own in transaction pooling mode with a small
    server pool (``default_pool_size``), the engine made with
    :func:`~wsgi_sqla.transaction_pooled` and keeping its ``QueuePool``;
``pgbouncer-nullpool``
    the same PgBouncer, with ``NullPool``: a new client connection to
    PgBouncer for every request, as sometimes advised.

wrk drives the mix with as many connections as the server has threads; its
``done`` hook reports the median and 99th percentile latency. While wrk
runs, a separate connection samples ``pg_stat_activity`` every 50 ms, so
the table shows how many PostgreSQL backends each configuration used (the
most open at once, the most running a query at once). Configurations take
turns within each round so that drift on the shared machine falls on all
of them; the figures are medians over rounds. Any non-2xx answer or socket
error is counted and shown: the run must have none.

The table goes to ``bench/pooling.rst`` (docs/deploying/pgbouncer.rst
includes it). Needs ``WSGI_SQLA_POSTGRESQL_URL``, Debian's ``pgbouncer`` and
``wrk``.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import scoped_session, sessionmaker
from sqlalchemy.pool import NullPool

from harness.pgbouncer import PgBouncer, PgBouncerMissing, find_pgbouncer
from harness.servers import gunicorn
from harness.wrk import wrk
from wsgi_sqla import SessionMiddleware, transaction_pooled

from .apps import Item, reset_table

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["CONFIGURATIONS", "Budget", "measure", "rst", "wsgi"]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
THREADS = 8
BOUNCER_POOL = 4
WRITE_EVERY = 5  # one insert in five requests
APPLICATION_NAME = "wsgi_sqla_bench_pooling"

CONFIGURATIONS = {
    "direct": "PostgreSQL directly, QueuePool per worker",
    "pgbouncer": f"PgBouncer (transaction, {BOUNCER_POOL} server conns), QueuePool",
    "pgbouncer-nullpool": f"PgBouncer (transaction, {BOUNCER_POOL} server conns), NullPool",
}


def wsgi(configuration: str, url: str) -> WSGIApplication:
    """The benchmark's application for ``configuration``, for gunicorn's ``module:call()``."""
    kw: dict[str, Any] = {"poolclass": NullPool} if configuration.endswith("nullpool") else {}
    engine = create_engine(url, connect_args={"application_name": APPLICATION_NAME}, **kw)
    if configuration != "direct":
        transaction_pooled(engine)
    session = scoped_session(sessionmaker(bind=engine))
    app = Flask(f"pooling_{configuration}")

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        row = session.get(Item, 1)
        return str(row.name if row is not None else "")

    @app.post("/insert")
    def insert() -> tuple[str, int]:
        session.add(Item(name="bench"))
        session.flush()
        return "created", 201

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    return app


_MIX = f"""
local n = 0
request = function()
  n = n + 1
  if n % {WRITE_EVERY} == 0 then
    return wrk.format("POST", "/insert")
  end
  return wrk.format("GET", "/read")
end
done = function(summary, latency, requests)
  io.write(string.format("p50_us %d\\np99_us %d\\n", latency:percentile(50),
                         latency:percentile(99)))
end
"""

_P = re.compile(r"p(50|99)_us (\d+)")


@dataclass
class Budget:
    """What one configuration did over the rounds."""

    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    open_backends: int = 0  # most PostgreSQL backends of the database open at once
    active_backends: int = 0  # most of them running a query at once
    errors: int = 0  # non-2xx answers and socket errors, all rounds


class _Sampler:
    """Samples the database's backends in pg_stat_activity until stopped."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.open = 0
        self.active = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Sampler:
        self._connection = psycopg.connect(self.conninfo, autocommit=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        query = (
            "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"
        )
        while not self._stop.is_set():
            row = self._connection.execute(query).fetchone()
            assert row is not None
            self.open, self.active = max(self.open, row[0]), max(self.active, row[1])
            self._stop.wait(0.05)


def _wrk(port: int, seconds: int, lua: Path) -> tuple[float, float, float, int]:
    """req/s, p50 ms, p99 ms and errors of one wrk run of the mix."""
    run = wrk(
        ["-t1", f"-c{WORKERS * THREADS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua),
         f"http://127.0.0.1:{port}/read"]
    )  # fmt: skip
    percentiles = dict(_P.findall(run.output))
    if set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"cannot read the percentiles in wrk's output:\n{run.output}")
    p50, p99 = int(percentiles["50"]) / 1000, int(percentiles["99"]) / 1000
    return run.rate, p50, p99, run.errors


def _gunicorn(
    configuration: str, url: str, log_dir: Path
) -> contextlib.AbstractContextManager[int]:
    return gunicorn(
        f"bench.pooling:wsgi({configuration!r}, {url!r})",
        log_dir / f"gunicorn-{configuration}.log",
        ["--worker-class", "gthread", "--workers", str(WORKERS), "--threads", str(THREADS)],
        timeout=60,
    )


def _conninfo(url: str) -> str:
    u = make_url(url)
    return (
        f"host={u.host or '127.0.0.1'} port={u.port or 5432} dbname={u.database} "
        f"user={u.username or 'postgres'}" + (f" password={u.password}" if u.password else "")
    )


def measure(url: str, *, rounds: int, seconds: int) -> tuple[dict[str, Budget], str]:
    """Run every configuration ``rounds`` times; the budgets and PgBouncer's version."""
    setup = create_engine(url)
    reset_table(setup)
    setup.dispose()  # its pooled connection would count as a backend
    budgets = {name: Budget() for name in CONFIGURATIONS}
    bouncer = PgBouncer(url, pool_size=BOUNCER_POOL)
    bouncer.start()
    try:
        version = bouncer.show("VERSION")[0]["version"]
        urls = {
            "direct": url,
            "pgbouncer": bouncer.url(),
            "pgbouncer-nullpool": bouncer.url(),
        }
        with tempfile.TemporaryDirectory(prefix="wsgi_sqla_pooling_") as tmp:
            lua = Path(tmp) / "mix.lua"
            lua.write_text(_MIX)
            names = list(CONFIGURATIONS)
            for round_number in range(rounds):
                shift = round_number % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    print(f"[pooling] round {round_number + 1}: {name}", flush=True)
                    with _gunicorn(name, urls[name], Path(tmp)) as port:
                        _wrk(port, 1, lua)  # warm-up: pools, caches, PgBouncer's servers
                        with _Sampler(_conninfo(url)) as sampler:
                            rate, p50, p99, errors = _wrk(port, seconds, lua)
                    budget = budgets[name]
                    budget.rates.append(rate)
                    budget.p50_ms.append(p50)
                    budget.p99_ms.append(p99)
                    budget.errors += errors
                    budget.open_backends = max(budget.open_backends, sampler.open)
                    budget.active_backends = max(budget.active_backends, sampler.active)
    finally:
        bouncer.stop()
        Item.metadata.drop_all(setup)
        setup.dispose()
    return budgets, version


def _cells(name: str, budget: Budget) -> list[str]:
    return [
        name,
        f"{statistics.median(budget.rates):.0f}",
        f"{statistics.median(budget.p50_ms):.1f}",
        f"{statistics.median(budget.p99_ms):.1f}",
        str(budget.open_backends),
        str(budget.active_backends),
        str(budget.errors),
    ]


HEADER = [
    "configuration",
    "req/s",
    "p50 ms",
    "p99 ms",
    "backends open (max)",
    "backends active (max)",
    "errors",
]


def text_table(budgets: dict[str, Budget]) -> str:
    """The table as plain text, for the terminal."""
    rows = [HEADER, *(_cells(name, b) for name, b in budgets.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def rst(
    budgets: dict[str, Budget],
    *,
    date: str,
    rounds: int,
    seconds: int,
    machine: list[str],
    versions: list[str],
) -> str:
    """The table and how it was measured, as reStructuredText for ``.. include::``."""

    def csv(cells: list[str]) -> str:
        return "   " + ", ".join(f'"{c}"' for c in cells)

    lines = [
        f"Measured {date}: gunicorn gthread, {WORKERS} workers x {THREADS} threads, wrk with "
        f"{WORKERS * THREADS} connections, one insert per {WRITE_EVERY} requests (the others "
        f"read one row); {rounds} round(s) of {seconds} s per configuration, configurations "
        "in rotating order; req/s and latencies are medians over rounds, backends the most "
        "seen in pg_stat_activity (sampled every 50 ms) in any round.",
        "",
        ".. csv-table::",
        "   :header: " + ", ".join(f'"{h}"' for h in HEADER),
        "",
        *(csv(_cells(f"{name}: {CONFIGURATIONS[name]}", b)) for name, b in budgets.items()),
        "",
        "Machine: " + "; ".join(machine) + ".",
        "",
        "Versions: " + "; ".join(versions) + ".",
        "",
    ]
    return "\n".join(lines)


def available() -> str | None:
    """Why the pooling benchmark cannot run here, or None when it can."""
    if not os.environ.get("WSGI_SQLA_POSTGRESQL_URL"):
        return (
            "set WSGI_SQLA_POSTGRESQL_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    try:
        find_pgbouncer()
    except PgBouncerMissing as exc:
        return str(exc)
    return None
