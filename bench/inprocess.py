"""In-process cost per request: the WSGI application called directly.

No server and no socket: each request is one call of the application with a
fresh copy of a prepared environ, followed by iterating the body to the end
and closing it, exactly what a WSGI server does. What is left is the
framework, the session handling under comparison and the database round
trips, all in this one thread.

Interleaving is what makes figures from a busy machine comparable: each
round runs a short batch of every system in turn (the order rotating from
round to round), so a slow spell of the machine lands on all systems
alike instead of on whichever happened to run then. Every request is timed
on its own; the median is the figure, the quartiles show the spread. The
comparison with the lower bound is paired: each round's batch median of a
system against the lower bound's in the same round, and the median of those
per-round ratios, so a slow spell falls on both sides of every ratio.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder

from wsgi_sqla import testing

from .apps import Request, System

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = [
    "Timing",
    "call",
    "count_round_trips",
    "environ_for",
    "middleware_overhead",
    "time_requests",
]


def environ_for(request: Request) -> WSGIEnvironment:
    """A WSGI environ for ``request``, to be copied for each call."""
    builder = EnvironBuilder(path=request.path, method=request.method)
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _write(_data: bytes) -> None:
    return None


def call(app: WSGIApplication, environ: WSGIEnvironment) -> int:
    """Serve one request as a server would; return the status code."""
    statuses: list[str] = []

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> Callable[..., Any]:
        statuses.append(status)
        return _write

    body = app(dict(environ), start_response)
    try:
        for _chunk in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return int(statuses[-1][:3])


def _check(system: System, request: Request, environ: WSGIEnvironment) -> None:
    status = call(system.app, environ)
    if status != request.status:
        raise RuntimeError(
            f"{system.name}: {request.method} {request.path} answered {status}, "
            f"expected {request.status}; the benchmark would compare different work"
        )


@dataclass
class Timing:
    """Per-request times of one system on one request, in nanoseconds."""

    samples: list[int] = field(default_factory=list)
    #: the median of each round's batch, in round order, for paired comparisons
    batch_medians: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        """Median time per request, in microseconds."""
        return statistics.median(self.samples) / 1000

    @property
    def quartiles_us(self) -> tuple[float, float]:
        """First and third quartiles, in microseconds."""
        q1, _q2, q3 = statistics.quantiles(self.samples, n=4)
        return q1 / 1000, q3 / 1000

    def _add_batch(self, batch: list[int]) -> None:
        self.samples.extend(batch)
        self.batch_medians.append(statistics.median(batch))

    def ratio_to(self, base: Timing) -> float:
        """Median over rounds of this batch median divided by ``base``'s of the same round."""
        return statistics.median(
            ours / theirs
            for ours, theirs in zip(self.batch_medians, base.batch_medians, strict=True)
        )

    def excess_over_us(self, base: Timing) -> float:
        """Median over rounds of this batch median minus ``base``'s, in microseconds."""
        return (
            statistics.median(
                ours - theirs
                for ours, theirs in zip(self.batch_medians, base.batch_medians, strict=True)
            )
            / 1000
        )


def time_requests(
    systems: Sequence[System],
    requests: Sequence[Request],
    *,
    rounds: int,
    batch: int,
    warmup: int,
) -> dict[tuple[str, str], Timing]:
    """Time every system on every request, interleaved; key ``(request.label, system.name)``."""
    environs = {request.label: environ_for(request) for request in requests}
    timings = {(r.label, s.name): Timing() for r in requests for s in systems}
    for request in requests:
        for system in systems:
            _check(system, request, environs[request.label])
            for _ in range(warmup):
                call(system.app, environs[request.label])
    clock = time.perf_counter_ns
    for round_number in range(rounds):
        shift = round_number % len(systems)
        order = [*systems[shift:], *systems[:shift]]
        gc.collect()
        for request in requests:
            environ = environs[request.label]
            for system in order:
                app = system.app
                samples = []
                for _ in range(batch):
                    start = clock()
                    call(app, environ)
                    samples.append(clock() - start)
                timings[request.label, system.name]._add_batch(samples)
    return timings


def count_round_trips(system: System, request: Request, *, requests: int) -> dict[str, float]:
    """Round trips per request of ``system`` serving ``request`` ``requests`` times."""
    environ = environ_for(request)
    _check(system, request, environ)
    with testing.count_round_trips(system.engine) as counts:
        for _ in range(requests):
            call(system.app, environ)
    return {kind: count / requests for kind, count in asdict(counts).items()}


def _plain_app(environ: WSGIEnvironment, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def middleware_overhead(*, rounds: int, batch: int) -> dict[str, Timing]:
    """wsgi_sqla's own cost: a plain WSGI app (no framework, no database) bare and wrapped.

    With Flask's tens of microseconds out of the way, the difference of the
    two medians is what ``SessionMiddleware`` adds to a request that never
    touches the database.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    from wsgi_sqla import SessionMiddleware

    session = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    apps: dict[str, WSGIApplication] = {
        "plain WSGI app": _plain_app,
        "plain WSGI app + SessionMiddleware": SessionMiddleware(_plain_app, session),
    }
    environ = environ_for(Request("plain", "GET", "/", 200))
    timings = {name: Timing() for name in apps}
    clock = time.perf_counter_ns
    for round_number in range(rounds):
        order = list(apps.items())
        if round_number % 2:
            order.reverse()
        for name, app in order:
            samples = []
            for _ in range(batch):
                start = clock()
                call(app, environ)
                samples.append(clock() - start)
            timings[name]._add_batch(samples)
    return timings
