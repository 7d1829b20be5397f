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
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .apps import Request

__all__ = [
    "EndToEnd",
    "WrkMissing",
    "free_port",
    "gunicorn",
    "measure",
    "run_wrk",
    "wrk_version",
]

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
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
    raise RuntimeError(
        f"gunicorn on port {port} did not answer within {timeout} s:\n{log.read_text()}"
    )


@contextmanager
def gunicorn(
    app: str,
    log: Path,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Iterator[int]:
    """Serve ``app`` (a gunicorn app spec) on a free 127.0.0.1 port, yielded once it answers.

    The app must answer ``GET /nodb`` with 200. ``args`` are gunicorn options
    (workers, worker class); its errors go to ``log``. Stopped on exit.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--chdir", str(ROOT),
        "--error-logfile", str(log), "--log-level", "warning", *_gunicorn_options(), *args, app,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_serving(port, process, log, timeout)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_wrk(args: Sequence[str]) -> str:
    """wrk's output for ``wrk args...``; raises when wrk fails."""
    command = ["wrk", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


_TOTAL = re.compile(r"(\d+) requests in")
#: What wrk prints: the rate, the responses that were not 2xx/3xx, socket errors.
RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: (.*)")


def _wrk(port: int, request: Request, seconds: int, connections: int, lua: Path) -> float:
    args = ["-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    if request.method == "POST":
        args += ["-s", str(lua)]
    out = run_wrk([*args, f"http://127.0.0.1:{port}{request.path}"])
    total_match, rate_match = _TOTAL.search(out), RATE.search(out)
    if total_match is None or rate_match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    total = int(total_match.group(1))
    non_2xx_match = NON_2XX.search(out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    expected = total if request.status >= 300 else 0
    errors = SOCKET_ERRORS.search(out)
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
        ports = {
            s: servers.enter_context(
                gunicorn(
                    f"bench.apps:wsgi({s!r}, {urls[s]!r})",
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
