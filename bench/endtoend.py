"""End to end: requests per second through gunicorn on 127.0.0.1, driven by wrk.

One gunicorn per system (default sync workers, as most deployments run)
serves the benchmark app; wrk, from Debian's ``wrk`` package, sends one
request kind at a time for a fixed number of seconds. As in process, the
systems take turns within each round so that drift cancels, and the figure
is the median over rounds; the ratio to the lower bound is paired by
round, and the table shows the lowest and highest round so that the noise
is there to see.

wrk is not a Python package, so ``pip install -e ".[bench]"`` cannot bring
it: without it the end-to-end part is skipped with a message saying so
(``apt-get install wrk``), and the in-process figures are still produced.
Every server is stopped before this module returns, whatever happened.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from harness.servers import gunicorn
from harness.wrk import WrkMissing, wrk, wrk_version

from .apps import Request

# WrkMissing and wrk_version are harness.wrk's, named here for bench/run.py.
__all__ = ["EndToEnd", "WrkMissing", "measure", "wrk_version"]


def _wrk(port: int, request: Request, seconds: int, connections: int, lua: Path) -> float:
    args = ["-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    if request.method == "POST":
        args += ["-s", str(lua)]
    run = wrk([*args, f"http://127.0.0.1:{port}{request.path}"])
    expected = run.requests if request.status >= 300 else 0
    if run.non_2xx != expected or any(run.socket_errors):
        raise RuntimeError(
            f"{request.method} {request.path}: {run.non_2xx} of {run.requests} responses were "
            f"not 2xx (expected {expected}); socket errors (connect, read, write, timeout): "
            f"{run.socket_errors}"
        )
    return run.rate


@dataclass
class EndToEnd:
    """Requests per second measured in each round."""

    rates: list[float]

    @property
    def median(self) -> float:
        """Median requests per second over the rounds."""
        return statistics.median(self.rates)

    def ratio_to(self, base: EndToEnd) -> float:
        """Median over rounds of this rate divided by ``base``'s in the same round."""
        return statistics.median(
            ours / theirs for ours, theirs in zip(self.rates, base.rates, strict=True)
        )


def measure(
    urls: dict[str, str],
    requests: Sequence[Request],
    *,
    rounds: int,
    seconds: int,
    workers: int = 2,
    connections: int = 4,
) -> dict[tuple[str, str], EndToEnd]:
    """Requests per second of every system on every request; key ``(request.label, system)``.

    ``urls`` maps each system to the database URL its server uses.
    """
    wrk_version()
    systems = list(urls)
    results = {(r.label, s): EndToEnd([]) for r in requests for s in systems}
    with tempfile.TemporaryDirectory(prefix="wsgi_sqla_bench_") as tmp, ExitStack() as servers:
        log_dir = Path(tmp)
        lua = log_dir / "post.lua"
        lua.write_text('wrk.method = "POST"\n')
        ports = {
            s: servers.enter_context(
                gunicorn(
                    f"bench.plain:wsgi({s!r}, {urls[s]!r})",
                    log_dir / f"gunicorn-{s}.log",
                    ["--workers", str(workers)],
                )
            )
            for s in systems
        }
        for round_number in range(rounds):
            shift = round_number % len(systems)
            order = [*systems[shift:], *systems[:shift]]
            for request in requests:
                for system in order:
                    rate = _wrk(ports[system], request, seconds, connections, lua)
                    results[request.label, system].rates.append(rate)
    return results
