"""``python -m bench --replicas``: read-heavy traffic on the primary alone and with a replica.

Starts its own throwaway clusters with the harness
(``harness/clusters.py``: PostgreSQL 15 primary + one streaming
replica, MariaDB primary + one GTID replica, on free 127.0.0.1 ports,
stopped at the end), then serves ``bench/replica_app.py`` with gunicorn (2
sync workers) twice per database, once with ``SessionMiddleware(app, db)``
and once with ``replicas=Replicas({db: [replica]})``, and drives each with wrk
(``bench/replicas.lua``: 90 % GET of a random row, 10 % POST, the position
token carried back in the header). The two setups alternate over the rounds.
Reported: requests per second, p99 latency, and the share of reads the
replica served (the app reports the server's own port, read in the same
SELECT), in ``bench/replicas.rst``, for docs/deploying/replicas.rst to include.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from harness.clusters import mariadb_cluster, postgresql_cluster
from harness.servers import gunicorn
from harness.wrk import wrk, wrk_version

from .replica_app import seed

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().with_name("replicas.lua")
_LINE = re.compile(
    r"BENCH primary_reads=(\d+) replica_reads=(\d+) p99_us=(\d+) p50_us=(\d+) "
    r"requests=(\d+) errors=(\d+)"
)


@dataclass
class Point:
    rate: float
    p99_ms: float
    replica_share: float


@dataclass
class Setup:
    label: str
    points: list[Point] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(p, name) for p in self.points))


def _serve(primary: str, replicas: list[str], log: Path) -> AbstractContextManager[int]:
    return gunicorn(
        "bench.replica_app:application",
        log,
        ["--workers", "2"],
        env={"PRIMARY_URL": primary, "REPLICA_URLS": " ".join(replicas)},
    )


def _wrk(port: int, seconds: int) -> Point:
    run = wrk(
        ["-t1", "-c4", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA),
         f"http://127.0.0.1:{port}/"]
    )  # fmt: skip
    line = _LINE.search(run.output)
    if line is None:
        raise RuntimeError(f"cannot read the replica counts in wrk's output:\n{run.output}")
    primary_reads, replica_reads, p99, _p50, _total, errors = map(int, line.groups())
    if errors:
        raise RuntimeError(f"wrk saw {errors} errors:\n{run.output}")
    reads = primary_reads + replica_reads
    return Point(run.rate, p99 / 1000, replica_reads / reads if reads else 0.0)


def measure(kind: str, rounds: int, seconds: int) -> tuple[str, list[Setup]]:
    """Both setups on ``kind`` (postgresql or mariadb), alternating over ``rounds``."""
    start = postgresql_cluster if kind == "postgresql" else mariadb_cluster
    alone, replicated = Setup("primary alone"), Setup("primary + 1 replica")
    with start(1) as cluster, tempfile.TemporaryDirectory() as tmp:
        seed(cluster.primary.url)
        cluster.wait_caught_up()
        engine = cluster.primary.engine()
        with engine.connect() as connection:
            version = ".".join(map(str, connection.dialect.server_version_info or ()))
        replica_urls = [r.url for r in cluster.replicas]
        for index in range(rounds):
            order = [(alone, []), (replicated, replica_urls)]
            if index % 2:
                order.reverse()
            for setup, replicas in order:
                log = Path(tmp) / f"gunicorn-{index}-{len(replicas)}.log"
                with _serve(cluster.primary.url, replicas, log) as port:
                    _wrk(port, 1)  # warm-up: connections, caches
                    setup.points.append(_wrk(port, seconds))
        return f"{kind} {version}", [alone, replicated]


def _csv(cells: list[str]) -> str:
    return ", ".join(f'"{cell}"' for cell in cells)


def table(results: list[tuple[str, list[Setup]]]) -> str:
    """The results as a reStructuredText csv-table (``bench/replicas.rst``)."""
    header = ["database", "setup", "req/s", "p99 (ms)", "reads served by the replica"]
    lines = [".. csv-table::", f"   :header: {_csv(header)}", ""]
    for server, setups in results:
        for setup in setups:
            row = [
                server,
                setup.label,
                f"{setup.median('rate'):.0f}",
                f"{setup.median('p99_ms'):.1f}",
                f"{100 * setup.median('replica_share'):.1f} %",
            ]
            lines.append(f"   {_csv(row)}")
    return "\n".join(lines)


def main(kinds: list[str], rounds: int, seconds: int, output: Path) -> None:
    wrk_version()
    results = [measure(kind, rounds, seconds) for kind in kinds]
    text = ".. Written by python -m bench --replicas (bench/replicas.py); do not edit by hand.\n\n"
    text += table(results)
    note = (
        "\n\n"
        f"wrk -t1 -c4, {seconds} s per point after a 1 s warm-up, {rounds} rounds with the "
        "two setups alternating, medians shown; gunicorn 2 sync workers; primary and replica "
        "on the same 2-core machine as gunicorn and wrk.\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + note)
    print(text + note)
