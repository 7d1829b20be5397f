"""``python -m bench``: run the whole comparison, print the table, write the files.

Databases: SQLite always (a file in a temporary directory); PostgreSQL and
MariaDB when ``WSGI_SQLA_POSTGRESQL_URL`` / ``WSGI_SQLA_MARIADB_URL`` are
set, the same variables the test suite reads. The benchmark creates and
drops its own table, ``bench_items``, in those databases and touches
nothing else.

``--quick`` takes about a minute; the full run a few minutes. ``--profile``
prints where wsgi_sqla's time goes instead of benchmarking. ``--pooling``
measures the connection budget instead (PostgreSQL directly and through
PgBouncer, see :mod:`bench.pooling`) and writes ``pooling.rst``;
``--idempotency`` what an Idempotency-Key costs a POST (:mod:`bench.idempotency`,
``idempotency.rst``); ``--instructions`` counts instructions per request
under valgrind's callgrind (see :mod:`bench.instructions`) and writes
``instructions.rst``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import platform
import pstats
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sqlalchemy import Engine

from . import apps, endtoend, inprocess, instructions, pooling, report

__all__ = ["main"]

HERE = Path(__file__).resolve().parent

URL_VARIABLES = {
    "postgresql": "WSGI_SQLA_POSTGRESQL_URL",
    "mariadb": "WSGI_SQLA_MARIADB_URL",
}
EXAMPLE_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
}
PACKAGES = (
    "SQLAlchemy",
    "Flask",
    "Werkzeug",
    "Flask-SQLAlchemy",
    "advanced-alchemy",
    "repoze.tm2",
    "zope.sqlalchemy",
    "transaction",
    "gunicorn",
    "psycopg",
    "PyMySQL",
)


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure."""

    rounds: int
    batch: int
    warmup: int
    count_requests: int
    e2e_rounds: int
    e2e_seconds: int  # wrk takes whole seconds


FULL = Settings(rounds=100, batch=15, warmup=200, count_requests=20, e2e_rounds=3, e2e_seconds=1)
QUICK = Settings(rounds=20, batch=10, warmup=30, count_requests=5, e2e_rounds=1, e2e_seconds=1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="wsgi_sqla side by side with hand-written commits, Flask hooks, "
        "repoze.tm2 + zope.sqlalchemy, Flask-SQLAlchemy and Advanced Alchemy.",
    )
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument(
        "--databases",
        help="comma-separated, from sqlite,postgresql,mariadb; default: sqlite plus every "
        "database whose URL variable is set",
    )
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="skip the gunicorn + wrk measurements"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=HERE,
        help="where results.rst and results.png go (default: %(default)s)",
    )
    parser.add_argument(
        "--replicas",
        action="store_true",
        help="instead: read-heavy traffic (90/10) on a primary alone and with one replica, "
        "on throwaway PostgreSQL and MariaDB clusters (writes replicas.rst)",
    )
    parser.add_argument(
        "--idempotency",
        action="store_true",
        help="instead: a keyed POST against an unkeyed one, in process, with round trips "
        "(bench/idempotency.py); writes idempotency.rst",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile wsgi_sqla's requests on SQLite with cProfile and print the hot spots",
    )
    parser.add_argument(
        "--pooling",
        action="store_true",
        help="instead: the connection budget on PostgreSQL, directly and through PgBouncer "
        "(bench/pooling.py); writes pooling.rst",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per request under valgrind's callgrind, every system and "
        "route on SQLite, and the cost of each feature when on (bench/instructions.py); "
        "writes instructions.rst",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="with --instructions: keep callgrind's dumps in DIR (for callgrind_annotate)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="with --instructions: systems counted at once (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _databases(requested: str | None, sqlite_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The URL of each database to run on, and notes on those left out."""
    urls = {"sqlite": f"sqlite:///{sqlite_dir / 'bench.sqlite3'}"}
    notes = []
    names = requested.split(",") if requested else ["sqlite", *URL_VARIABLES]
    for name in names:
        if name == "sqlite":
            continue
        if name not in URL_VARIABLES:
            raise SystemExit(
                f"python -m bench: unknown database {name!r}; choose from sqlite,postgresql,mariadb"
            )
        url = os.environ.get(URL_VARIABLES[name])
        if url:
            urls[name] = url
        elif requested:
            raise SystemExit(
                f"python -m bench: --databases names {name} but {URL_VARIABLES[name]} is not "
                f"set; set it, e.g. {URL_VARIABLES[name]}={EXAMPLE_URLS[name]}"
            )
        else:
            notes.append(f"{name} skipped: set {URL_VARIABLES[name]} to include it")
    if requested and "sqlite" not in names:
        del urls["sqlite"]
    return urls, notes


def _server_version(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect():
        version = engine.dialect.server_version_info or ()
    return f"{engine.dialect.name} {'.'.join(map(str, version))}"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _git_revision() -> str:
    try:
        revision = subprocess.run(
            ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return revision


def _versions(wrk: str | None) -> list[str]:
    lines = [f"Python {platform.python_version()} ({platform.python_implementation()})"]
    lines.append(f"wsgi_sqla {metadata.version('wsgi_sqla')} (git {_git_revision()})")
    for package in PACKAGES:
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{package} not installed")
    lines.append(wrk or "wrk not installed")
    return lines


def _method(settings: Settings, e2e: bool) -> list[str]:
    lines = [
        "Same Flask app and work for every system (see bench/apps.py); one engine per "
        "system with SQLAlchemy's default pool; SQLite is a file in a temporary directory "
        "with WAL and synchronous=NORMAL.",
        "Every optional feature of wsgi_sqla off: ``import opentelemetry`` fails in the "
        "benchmark and its servers, as without the otel extra (bench/plain.py); what "
        "telemetry costs is in the instructions table's feature rows.",
        "In process: the WSGI app is called directly with a copy of a prepared environ; "
        "the body is iterated and closed, as a server does. Each request is timed alone "
        f"(perf_counter_ns); {settings.rounds} rounds, each running a batch of "
        f"{settings.batch} requests per system in turn, the order rotating every round, "
        f"after {settings.warmup} warm-up requests each: {settings.rounds * settings.batch} "
        "samples per cell. Figure: median; spread: first to third quartile.",
        "vs lower bound: paired by round, the median over rounds of the system's batch "
        "median divided by the hand-written lower bound's batch median of the same round "
        "(the same for the µs excess and the comparisons with other systems).",
        f"Round trips: SQLAlchemy events over {settings.count_requests} requests, per "
        "request. 'pool resets' are rollbacks the pool issued when a connection came back "
        "with its transaction not ended (a no-op on psycopg and sqlite3 when idle, a "
        "ROLLBACK message on PyMySQL).",
    ]
    if e2e:
        lines.append(
            "End to end: one gunicorn per system (2 sync workers, 127.0.0.1), wrk with 1 "
            f"thread and 4 connections for {settings.e2e_seconds:g} s per point; "
            f"{settings.e2e_rounds} round(s), systems in rotating order; figure: median "
            "over rounds, ratio paired by round, lowest and highest round shown. wrk "
            "shares the 2 cores with gunicorn."
        )
        lines.append(
            "On SQLite each system's server has its own database file: repoze.tm2 (2.3) "
            "commits or aborts only after the body was iterated to its end; when the server "
            "closes the body early because the client went away (wrk does at the end of "
            "each point), its generator gets GeneratorExit, which its ``except Exception`` "
            "does not catch, so the transaction stays open, holding SQLite's write lock "
            "until that worker's next request, and would stall the other systems' servers."
        )
    lines.append(
        "The machine is shared (2 cores, other developers' test runs in parallel): "
        "interleaving makes drift fall on every system alike; the load average is "
        "recorded above."
    )
    return lines


def _machine() -> list[str]:
    return [
        f"{platform.system()} {platform.release()} {platform.machine()}",
        f"CPU: {_cpu()}, {os.cpu_count()} logical cores",
        f"load average (1, 5, 15 min) at start: {_load()}",
    ]


def _end_to_end_urls(name: str, url: str, sqlite_dir: Path) -> dict[str, str]:
    """The database each system's server uses end to end.

    On SQLite every system gets its own file: a server that keeps a write
    transaction open (repoze.tm2 does when a client disconnects mid-response,
    as wrk's connections do at the end of each point) holds the file's write
    lock and would stall the servers of the other systems.
    """
    if name != "sqlite":
        return dict.fromkeys(apps.SYSTEMS, url)
    urls = {}
    for system in apps.SYSTEMS:
        urls[system] = f"sqlite:///{sqlite_dir / f'e2e-{system}.sqlite3'}"
        engine = apps.make_engine(urls[system])
        apps.reset_table(engine)
        engine.dispose()
    return urls


def _measure(
    name: str, url: str, settings: Settings, e2e: bool, sqlite_dir: Path
) -> report.DatabaseResults:
    setup = apps.make_engine(url)
    try:
        apps.reset_table(setup)
        server = _server_version(setup)
        print(f"[{name}] {server}: building the systems", flush=True)
        systems = [apps.build(system, url) for system in apps.SYSTEMS]
        print(f"[{name}] counting round trips", flush=True)
        trips = {
            (request.label, system.name): inprocess.count_round_trips(
                system, request, requests=settings.count_requests
            )
            for request in apps.REQUESTS
            for system in systems
        }
        print(f"[{name}] timing in process", flush=True)
        timings = inprocess.time_requests(
            systems,
            apps.REQUESTS,
            rounds=settings.rounds,
            batch=settings.batch,
            warmup=settings.warmup,
        )
        for system in systems:
            system.engine.dispose()
        end_to_end = None
        if e2e:
            print(f"[{name}] end to end through gunicorn", flush=True)
            end_to_end = endtoend.measure(
                _end_to_end_urls(name, url, sqlite_dir),
                apps.REQUESTS,
                rounds=settings.e2e_rounds,
                seconds=settings.e2e_seconds,
            )
        return report.DatabaseResults(name, server, timings, trips, end_to_end)
    finally:
        apps.Base.metadata.drop_all(setup)
        setup.dispose()


def _profile(sqlite_dir: Path) -> None:
    url = f"sqlite:///{sqlite_dir / 'profile.sqlite3'}"
    setup = apps.make_engine(url)
    apps.reset_table(setup)
    system = apps.build("wsgi_sqla", url)
    for request in apps.REQUESTS:
        environ = inprocess.environ_for(request)
        for _ in range(200):
            inprocess.call(system.app, environ)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5000):
            inprocess.call(system.app, environ)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        own = sum(
            row[2]
            for key, row in stats.stats.items()  # type: ignore[attr-defined]
            if "wsgi_sqla" in Path(key[0]).parts
        )
        print(
            f"\n== wsgi_sqla, {request.method} {request.path} ({request.label}), 5000 requests: "
            f"{100 * own / stats.total_tt:.1f}% of the profiled time is in wsgi_sqla's "  # type: ignore[attr-defined]
            "own functions"
        )
        stats.sort_stats("tottime").print_stats(r"wsgi_sqla[/\\]", 15)
    overhead = inprocess.middleware_overhead(rounds=200, batch=100)
    print("\n== SessionMiddleware alone (plain WSGI app, no database)")
    for name, timing in overhead.items():
        print(f"{name}: median {timing.median_us:.2f} µs")
    system.engine.dispose()
    setup.dispose()


def _pooling(args: argparse.Namespace) -> None:
    unavailable = pooling.available()
    if unavailable is not None:
        raise SystemExit(f"python -m bench --pooling: {unavailable}")
    try:
        wrk = endtoend.wrk_version()
    except endtoend.WrkMissing as exc:
        raise SystemExit(f"python -m bench --pooling: {exc}") from None
    rounds, seconds = (1, 5) if args.quick else (3, 10)
    url = os.environ[URL_VARIABLES["postgresql"]]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = _machine()
    setup = apps.make_engine(url)
    server = _server_version(setup)
    setup.dispose()
    budgets, bouncer = pooling.measure(url, rounds=rounds, seconds=seconds)
    machine.append(f"load average (1, 5, 15 min) at end: {_load()}")
    versions = [server.replace("postgresql", "PostgreSQL"), bouncer, *_versions(wrk)]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table = pooling.rst(
        budgets, date=date, rounds=rounds, seconds=seconds, machine=machine, versions=versions
    )
    (args.output_dir / "pooling.rst").write_text(table)
    print(pooling.text_table(budgets))
    print("\n".join(["", *machine, *versions]))
    print(f"wrote pooling.rst in {args.output_dir}")


def _instructions(args: argparse.Namespace) -> None:
    try:
        valgrind = instructions.valgrind_version()
    except instructions.ValgrindMissing as exc:
        raise SystemExit(f"python -m bench --instructions: {exc}") from None
    stretches = instructions.QUICK if args.quick else instructions.FULL
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = [*apps.SYSTEMS, *apps.REFERENCES, *apps.VARIANTS]
    counts = instructions.measure(names, stretches=stretches, jobs=args.jobs, keep=args.keep)
    versions = [f"SQLite {sqlite3.sqlite_version}", valgrind, *_versions(None)[:-1]]
    text = instructions.rst(
        counts,
        list(apps.SYSTEMS),
        list(apps.VARIANTS),
        references=list(apps.REFERENCES),
        date=date,
        machine=_machine()[:2],
        versions=versions,
        stretches=stretches,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "instructions.rst").write_text(text)
    print(text)
    print(f"wrote instructions.rst (docs/benchmarks.rst includes it) in {args.output_dir}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark as the command line asks."""
    args = _parse(argv)
    if args.pooling:
        _pooling(args)
        return
    if args.instructions:
        _instructions(args)
        return
    settings = QUICK if args.quick else FULL
    if args.replicas:
        from . import replicas

        kinds = args.databases.split(",") if args.databases else ["postgresql", "mariadb"]
        replicas.main(
            kinds,
            rounds=1 if args.quick else 3,
            seconds=3 if args.quick else 5,
            output=args.output_dir / "replicas.rst",
        )
        return
    with tempfile.TemporaryDirectory(prefix="wsgi_sqla_bench_") as tmp:
        if args.idempotency:
            from . import idempotency

            urls, _notes = _databases(args.databases, Path(tmp))
            idempotency.main(
                urls,
                rounds=3 if args.quick else 10,
                batch=20 if args.quick else 50,
                output=args.output_dir / "idempotency.rst",
            )
            return
        if args.profile:
            _profile(Path(tmp))
            return
        urls, notes = _databases(args.databases, Path(tmp))
        wrk = None
        e2e = not args.no_end_to_end
        if e2e:
            try:
                wrk = endtoend.wrk_version()
            except endtoend.WrkMissing as exc:
                print(f"python -m bench: {exc}", file=sys.stderr)
                notes.append(str(exc))
                e2e = False
        run = report.Run(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            mode="quick" if args.quick else "full",
            machine=_machine(),
            versions=_versions(wrk),
            method=_method(settings, e2e),
            systems=list(apps.SYSTEMS),
            notes=notes,
        )
        run.overhead = inprocess.middleware_overhead(
            rounds=settings.rounds * 4, batch=settings.batch * 4
        )
        for name, url in urls.items():
            run.databases.append(_measure(name, url, settings, e2e, Path(tmp)))
        run.machine.append(f"load average (1, 5, 15 min) at end: {_load()}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text = report.rst(run)
    (args.output_dir / "results.rst").write_text(text)
    report.plot(run, args.output_dir / "results.png")
    print(text)
    print(
        f"wrote results.rst (docs/benchmarks.rst includes it) and results.png in {args.output_dir}"
    )
