"""Per-test cost of the two ways to isolate tests: reset_schema() and isolated().

Usage::

    python bench/isolation.py [URL ...] [--tests N]

Without a URL it measures ``$WSGI_SQLA_POSTGRESQL_URL``. It creates a
12-table schema (foreign keys, unique constraints, indexes) in that
database, then times, test by test, three ways of running the same test body:

``reset_schema``
    ``reset_schema(metadata, engine)`` before the body: drop and re-create
    every table, the pattern this package grew out of.
``isolated``
    the body inside ``isolated(db)``, which is what the pytest plugin's
    ``wsgi_sqla_db`` fixture does: one connection, an outer transaction,
    savepoints, a rollback at the end.
``body only``
    the body with no isolation at all (and fresh names each time), to show
    what the two add to it.

It prints each database's figures, and writes the table that
docs/testing.rst includes to ``bench/isolation.rst`` (``--output``): the
median and 95th percentile of each way, per database.

The body is one POST through ``SessionMiddleware`` (WebTest) that inserts an
account, a user, a project and a task, then one GET that reads them back.
The tables are dropped at the end. Figures are per test, in milliseconds,
measured with ``time.perf_counter`` around the whole test (set-up, body,
tear-down); the first tests of each way are run as a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import webob
import webob.dec
import webtest
from sqlalchemy import (
    Boolean,
    Column,
    CursorResult,
    DateTime,
    ForeignKey,
    Index,
    Insert,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    insert,
    make_url,
    select,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from wsgi_sqla import SessionMiddleware, isolated, reset_schema

metadata = MetaData()


def _table(name: str, *columns: Any) -> Table:
    return Table(f"bench_{name}", metadata, Column("id", Integer, primary_key=True), *columns)


accounts = _table(
    "accounts",
    Column("name", String(80), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
)
users = _table(
    "users",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False),
    Column("email", String(120), nullable=False, unique=True),
    Column("name", String(80), nullable=False),
    Column("created_at", DateTime, nullable=False),
)
projects = _table(
    "projects",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False),
    Column("name", String(80), nullable=False),
    UniqueConstraint("account_id", "name"),
)
tasks = _table(
    "tasks",
    Column("project_id", ForeignKey("bench_projects.id"), nullable=False),
    Column("assignee_id", ForeignKey("bench_users.id")),
    Column("title", String(200), nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Index("bench_tasks_open", "project_id", "done"),
)
comments = _table(
    "comments",
    Column("task_id", ForeignKey("bench_tasks.id"), nullable=False),
    Column("author_id", ForeignKey("bench_users.id"), nullable=False),
    Column("body", Text, nullable=False),
)
tags = _table(
    "tags",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False),
    Column("name", String(40), nullable=False),
    UniqueConstraint("account_id", "name"),
)
task_tags = Table(
    "bench_task_tags",
    metadata,
    Column("task_id", ForeignKey("bench_tasks.id"), primary_key=True),
    Column("tag_id", ForeignKey("bench_tags.id"), primary_key=True),
)
attachments = _table(
    "attachments",
    Column("task_id", ForeignKey("bench_tasks.id"), nullable=False),
    Column("filename", String(200), nullable=False),
    Column("size", Integer, nullable=False),
)
invoices = _table(
    "invoices",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False),
    Column("number", String(20), nullable=False, unique=True),
    Column("total", Numeric(12, 2), nullable=False),
)
invoice_lines = _table(
    "invoice_lines",
    Column("invoice_id", ForeignKey("bench_invoices.id"), nullable=False),
    Column("description", String(200), nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
)
audit_log = _table(
    "audit_log",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False),
    Column("user_id", ForeignKey("bench_users.id")),
    Column("action", String(40), nullable=False),
    Column("at", DateTime, nullable=False, index=True),
)
settings = _table(
    "settings",
    Column("account_id", ForeignKey("bench_accounts.id"), nullable=False, unique=True),
    Column("data", Text, nullable=False),
)


def make_app(db: scoped_session[Session]) -> webtest.TestApp:
    """POST /?name=… creates an account with a user, a project and a task; GET / counts tasks."""

    def new_id(statement: Insert) -> Any:
        """The primary key of the row ``statement`` inserted."""
        key = cast("CursorResult[Any]", db.execute(statement)).inserted_primary_key
        assert key is not None
        return key[0]

    @webob.dec.wsgify
    def app(request: webob.Request) -> webob.Response:
        if request.method == "POST":
            name, now = str(request.params["name"]), datetime.now()
            account = new_id(insert(accounts).values(name=name, created_at=now))
            user = new_id(
                insert(users).values(
                    account_id=account, email=f"{name}@example.com", name=name, created_at=now
                )
            )
            project = new_id(insert(projects).values(account_id=account, name="launch"))
            db.execute(insert(tasks).values(project_id=project, assignee_id=user, title="ship it"))
            db.execute(
                insert(invoices).values(account_id=account, number=name[:20], total=Decimal(0))
            )
            return webob.Response("created", status=201)
        count = db.scalar(select(func.count()).select_from(tasks).where(tasks.c.done.is_(False)))
        return webob.Response(str(count))

    return webtest.TestApp(SessionMiddleware(app, db))


def measure(
    tests: int,
    warmup: int,
    around: Callable[[], AbstractContextManager[Any]],
    body: Callable[[int], None],
) -> list[float]:
    """Milliseconds per test for ``tests`` tests, after ``warmup`` uncounted ones."""
    times: list[float] = []
    for number in range(warmup + tests):
        start = time.perf_counter()
        with around():
            body(number)
        if number >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def run(url: str, tests: int, warmup: int) -> dict[str, list[float]]:
    engine = create_engine(url)
    db = scoped_session(sessionmaker(bind=engine))
    client = make_app(db)
    results: dict[str, list[float]] = {}
    fresh = iter(range(10**9))

    def body(number: int) -> None:
        name = f"acct{next(fresh)}"
        client.post(f"/?name={name}", status=201)
        assert client.get("/").text != "0"

    @contextmanager
    def reset() -> Iterator[None]:
        reset_schema(metadata, engine)
        yield

    try:
        reset_schema(metadata, engine)
        results["reset_schema"] = measure(tests, warmup, reset, body)
        reset_schema(metadata, engine)
        results["isolated"] = measure(tests, warmup, lambda: isolated(db), body)
        results["body only"] = measure(tests, warmup, nullcontext, body)
    finally:
        db.remove()
        metadata.drop_all(engine)
        engine.dispose()
    return results


def report(url: str, results: dict[str, list[float]]) -> None:
    shown = url.split("@")[-1] if "@" in url else url
    print(f"\n{shown}  ({len(metadata.tables)} tables, {len(results['isolated'])} tests each)")
    print(f"  {'per test, ms':<14}{'median':>9}{'mean':>9}{'p95':>9}{'min':>9}")
    for name, times in results.items():
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"  {name:<14}{statistics.median(times):>9.2f}{statistics.fmean(times):>9.2f}"
            f"{p95:>9.2f}{ordered[0]:>9.2f}"
        )
    body = statistics.median(results["body only"])
    reset = statistics.median(results["reset_schema"]) - body
    iso = statistics.median(results["isolated"]) - body
    print(f"  added to the body (median): reset_schema {reset:.2f} ms, isolated {iso:.2f} ms")


_DIALECTS = {"postgresql": "PostgreSQL", "mariadb": "MariaDB", "mysql": "MySQL", "sqlite": "SQLite"}


def label(url: str) -> str:
    """``PostgreSQL 127.0.0.1``, ``SQLite file``: the database, never the credentials."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    return f"{_DIALECTS.get(backend, backend)} {parsed.host or 'file'}"


def _median_p95(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(times):.2f} ({p95:.2f})"


def rst(runs: dict[str, dict[str, list[float]]], tests: int, warmup: int) -> str:
    """The table docs/testing.rst includes: median (p95) ms per test, per database and way."""
    header = '"per test, median (p95), ms", "``reset_schema``", "``wsgi_sqla_db``", "body alone"'
    lines = [
        ".. Written by python bench/isolation.py; do not edit by hand.",
        "",
        ".. csv-table::",
        f"   :header: {header}",
        "",
    ]
    for name, results in runs.items():
        cells = [
            name,
            *(_median_p95(results[way]) for way in ("reset_schema", "isolated", "body only")),
        ]
        lines.append("   " + ", ".join(f'"{cell}"' for cell in cells))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines += [
        "",
        f"{tests} tests of each way per database after {warmup} uncounted warm-up tests; "
        f"{os.cpu_count()} logical cores, load average (1, 5, 15 min) at the end: {load}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "urls", nargs="*", help="database URLs (default: $WSGI_SQLA_POSTGRESQL_URL)"
    )
    parser.add_argument("--tests", type=int, default=50, help="tests per way (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="uncounted tests first (default 5)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().with_name("isolation.rst"),
        help="the table for docs/testing.rst (default: bench/isolation.rst)",
    )
    args = parser.parse_args(argv)
    urls = args.urls or [os.environ.get("WSGI_SQLA_POSTGRESQL_URL", "")]
    if not all(urls):
        parser.error("give a database URL or set WSGI_SQLA_POSTGRESQL_URL")
    runs = {}
    for url in urls:
        runs[label(url)] = results = run(url, args.tests, args.warmup)
        report(url, results)
    args.output.write_text(rst(runs, args.tests, args.warmup))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
