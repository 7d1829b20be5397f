"""wrk, the HTTP load generator: its version, one run, and what it printed, read.

A run's own figures (percentiles, counters a Lua script prints) are the
caller's to read from :attr:`WrkRun.output`; what every run prints (the
request count and rate, non-2xx answers, socket errors) is read here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WrkMissing", "WrkRun", "parse", "run_wrk", "wrk", "wrk_version"]

_TOTAL = re.compile(r"(\d+) requests in")
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkMissing(RuntimeError):
    """wrk is not installed, so nothing can be measured end to end."""


def wrk_version() -> str:
    """wrk's version line; raises :class:`WrkMissing` when it is not on PATH."""
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing(
            "wrk is not installed, so the end-to-end figures are skipped; "
            "install it with `apt-get install wrk` (Debian/Ubuntu) and run again"
        )
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0]


def run_wrk(args: Sequence[str]) -> str:
    """wrk's output for ``wrk args...``; raises ``RuntimeError`` when wrk fails."""
    command = ["wrk", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run printed, read."""

    output: str
    #: Requests completed, and completed per second.
    requests: int
    rate: float
    #: Answers whose status was not 2xx or 3xx.
    non_2xx: int
    #: Socket errors: connect, read, write, timeout (all 0 when wrk printed none).
    socket_errors: tuple[int, int, int, int]

    @property
    def errors(self) -> int:
        """Non-2xx/3xx answers plus socket errors."""
        return self.non_2xx + sum(self.socket_errors)


def parse(output: str) -> WrkRun:
    """Read wrk's output; ``RuntimeError`` with the output when it has no rate or count."""
    total, rate = _TOTAL.search(output), _RATE.search(output)
    if total is None or rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET_ERRORS.search(output)
    connect, read, write, timeout = (int(g) for g in sockets.groups()) if sockets else (0,) * 4
    return WrkRun(
        output=output,
        requests=int(total.group(1)),
        rate=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=(connect, read, write, timeout),
    )


def wrk(args: Sequence[str]) -> WrkRun:
    """Run ``wrk args...`` and read its output."""
    return parse(run_wrk(args))
