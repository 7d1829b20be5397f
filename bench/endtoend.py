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

import http.client
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .apps import Request

__all__ = ["EndToEnd", "WrkMissing", "measure", "wrk_version"]

ROOT = Path(__file__).resolve().parent.parent


class WrkMissing(RuntimeError):
    """wrk is not installed, so nothing can be measured end to end."""


def wrk_version() -> str:
    """wrk's version line; raises :class:`WrkMissing` when it is not on PATH."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkMissing(
            "wrk is not installed, so the end-to-end figures are skipped; "
            "install it with `apt-get install wrk` (Debian/Ubuntu) and run again"
        )
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0]


def _gunicorn_options() -> list[str]:
    """Options for this gunicorn: no control socket where it has one.

    Newer gunicorns open a control socket at one fixed path per user; several
    benchmark servers (and anyone else's gunicorn) would fight over it.
    """
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return ["--no-control-socket"] if "--no-control-socket" in help_text else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/nodb")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn on port {port} did not answer within 30 s:\n{log.read_text()}")


@contextmanager
def _gunicorn(
    system: str, url: str, workers: int, log_dir: Path, options: list[str]
) -> Iterator[int]:
    port = _free_port()
    log = log_dir / f"gunicorn-{system}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(ROOT),
        "--error-logfile",
        str(log),
        "--log-level",
        "warning",
        *options,
        f"bench.apps:wsgi({system!r}, {url!r})",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(port, process, log)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_TOTAL = re.compile(r"(\d+) requests in")
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: (.*)")


def _wrk(port: int, request: Request, seconds: int, connections: int, lua: Path) -> float:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    if request.method == "POST":
        command += ["-s", str(lua)]
    command.append(f"http://127.0.0.1:{port}{request.path}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    out = done.stdout
    total_match, rate_match = _TOTAL.search(out), _RATE.search(out)
    if total_match is None or rate_match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    total = int(total_match.group(1))
    non_2xx_match = _NON_2XX.search(out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    expected = total if request.status >= 300 else 0
    errors = _SOCKET_ERRORS.search(out)
    if non_2xx != expected or errors is not None:
        raise RuntimeError(
            f"{request.method} {request.path}: {non_2xx} of {total} responses were not 2xx "
            f"(expected {expected}); socket errors: {errors.group(1) if errors else 'none'}"
        )
    return float(rate_match.group(1))


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
        options = _gunicorn_options()
        ports = {
            s: servers.enter_context(_gunicorn(s, urls[s], workers, log_dir, options))
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
