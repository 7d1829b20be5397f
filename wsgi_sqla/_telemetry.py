"""What each unit of work decided, as OpenTelemetry spans and metrics and as log fields.

The unit of work owns the decision to commit or roll back, so it is the one
that reports it. Install the extra (``pip install wsgi_sqla[otel]``, which
adds ``opentelemetry-api`` and never the SDK) and configure OpenTelemetry's
providers in the application; without providers the API's no-op ones
record nothing. Without the API installed, :data:`tracing` is ``None``,
checked once at import, and the units pay one comparison with ``None`` at
each of their steps.

Spans. One span per unit, ``wsgi_sqla.unit``, of kind INTERNAL, a child of
the span current when the unit started (the server's request span under
``opentelemetry-instrumentation-wsgi``). It ends when the unit ends, after
its after-commit hooks. Each session's ``COMMIT`` or ``ROLLBACK`` is a child
span named after it, with ``db.system.name`` and ``db.operation.name``; a
single session's ``COMMIT`` span includes its final flush. Attributes of
the unit span:

* ``wsgi_sqla.owner``: ``request``, ``transaction`` or ``task``;
* ``wsgi_sqla.outcome``: ``committed``, ``rolled_back``, ``commit_failed``
  (the commit raised; everything was rolled back) or ``in_doubt`` (the
  connection was lost during ``COMMIT``: nobody knows);
* ``wsgi_sqla.reason``: what decided the outcome: ``status`` (a request,
  by its status with the default veto), ``veto`` (a custom
  ``commit_veto``), ``ended`` (a block or task returned), ``force_commit``,
  ``force_rollback``, ``exception`` (the application, the veto or the
  commit raised), ``rejected`` (the database rejected a statement and the
  application went on), ``connection_lost`` (in doubt), ``truncated`` (a
  request body shorter than its ``Content-Length``), ``removed`` (a session
  was removed by someone else: its work was discarded);
* ``http.response.status_code``: the status the application chose;
* with replicas: ``wsgi_sqla.route`` (``primary`` or ``replica``, once a
  statement ran) and ``wsgi_sqla.token`` (``kept``, ``dropped`` or
  ``issued``, when the client carried a position token or got one);
* with retries: ``wsgi_sqla.attempt``, 1 for the first run;
* with idempotency keys: ``wsgi_sqla.idempotency = executed`` on the unit
  that runs a keyed request (a repeat answered from its record, and a key
  refused as in progress or reused with another body, run no unit: the
  metric counts them as ``replayed`` and ``conflict``);
* ``error.type``: the exception's class, when one ended the unit; it is
  also recorded as an event, and the span's status is ERROR.

Metrics (meter ``wsgi_sqla``):

* ``wsgi_sqla.units`` (counter): units by ``wsgi_sqla.owner``,
  ``wsgi_sqla.outcome`` and ``wsgi_sqla.reason``;
* ``db.client.operation.duration`` (histogram, seconds, the database
  semantic conventions' name): each session's ``COMMIT`` and ``ROLLBACK``,
  by ``db.system.name`` and ``db.operation.name``, with ``error.type`` when
  it failed;
* ``wsgi_sqla.commits.in_doubt`` (counter): commits whose outcome is unknown;
* ``wsgi_sqla.retries`` (counter): requests run again, by ``error.type``;
* ``wsgi_sqla.replicas.routed`` (counter): units by ``wsgi_sqla.route``;
* ``wsgi_sqla.replicas.lag`` (gauge, seconds): each replica's last lag
  measured by the lag monitor, by ``wsgi_sqla.replica`` (its URL, password
  hidden); a replica not replicating at all is left out (its log says so);
* ``wsgi_sqla.idempotency`` (counter): keyed requests by
  ``wsgi_sqla.idempotency``: ``executed``, ``replayed``, ``conflict``.

Log fields. Every decision and failure record of the ``wsgi_sqla`` logger
carries ``outcome``, ``reason``, ``owner``, ``status`` and ``duration`` (the
commit's seconds, when measured: with the OpenTelemetry API installed, or
for the DEBUG decision record; ``None`` otherwise) as attributes of the
record (:func:`facts`), which JSON formatters emit without parsing.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import current
from ._http import default_commit_veto
from ._registry import is_live, rollback_one

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ._unit import UnitOfWork

__all__ = [
    "Record",
    "Tracing",
    "default_veto",
    "facts",
    "failed",
    "idempotency",
    "owner_of",
    "tracing",
    "unit_facts",
]

logger = logging.getLogger("wsgi_sqla")

_T = TypeVar("_T")

#: The outcomes a unit ends with.
COMMITTED, ROLLED_BACK, COMMIT_FAILED, IN_DOUBT = (
    "committed",
    "rolled_back",
    "commit_failed",
    "in_doubt",
)
# Buckets of the semantic conventions' db.client.operation.duration.
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def facts(
    owner: str,
    outcome: str,
    reason: str,
    status: str | None = None,
    duration: float | None = None,
) -> dict[str, object]:
    """The ``extra`` of a decision or failure log record: the unit's facts as fields."""
    return {
        "owner": owner,
        "outcome": outcome,
        "reason": reason,
        "status": status,
        "duration": duration,
    }


def owner_of(unit: UnitOfWork) -> str:
    """Who runs ``unit``: ``"request"`` unless ``unit_of_work()`` said otherwise."""
    return getattr(unit, "_owner", "request")


def default_veto(runs: object) -> bool:
    """Whether the request run by ``runs`` (a middleware, or its keyed run) has the default veto.

    Then a veto's decision is reported as the ``status`` reason.
    """
    middleware = getattr(runs, "middleware", runs)
    return getattr(middleware, "commit_veto", None) is default_commit_veto


def unit_facts(
    unit: UnitOfWork, outcome: str, reason: str, status: str | None = None
) -> dict[str, object]:
    """:func:`facts` of ``unit``: its owner, and what its telemetry knows if it is on."""
    record: Record | None = getattr(unit, "_trace", None)
    if record is None:
        return facts(owner_of(unit), outcome, reason, status)
    return facts(owner_of(unit), outcome, reason, status or record.status, record.commit_seconds)


def failed(unit: UnitOfWork, error: BaseException, outcome: str, reason: str, message: str) -> None:
    """``unit``'s commit failed for ``reason``: logged once, as an ERROR with its facts."""
    if tracing is not None:
        tracing.failed(unit._trace, outcome, reason, error)
    logger.error(message, error, extra=unit_facts(unit, outcome, reason))


class Record:
    """What one unit's span has seen so far; made only while telemetry is on."""

    __slots__ = (
        "attempt",
        "commit_seconds",
        "decision",
        "default_veto",
        "ended",
        "error",
        "idempotency",
        "outcome",
        "reason",
        "span",
        "status",
    )

    def __init__(self, span: Any) -> None:
        self.span = span
        self.outcome: str | None = None
        self.reason: str | None = None
        self.decision = False
        self.status: str | None = None
        self.default_veto = False
        self.attempt: int | None = None
        self.idempotency: str | None = None
        self.error: BaseException | None = None
        self.commit_seconds: float | None = None
        self.ended = False


def _system(session: Session) -> str:
    """``db.system.name`` of the database ``session`` commits to."""
    try:
        dialect = session.get_bind().dialect
    except Exception:
        return "other_sql"
    if getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return str(dialect.name)


def _in_flight() -> BaseException | None:
    """The exception being handled where a unit is rolled back or ended, if any."""
    return sys.exc_info()[1]


def _lag_observations(options: Any) -> Iterable[Any]:
    from opentelemetry.metrics import Observation

    # Imported here: the replicas' modules import the unit, which imports this module.
    from ._replicas.monitor import monitor

    for replica in list(monitor.replicas):
        lag = replica.lag
        if lag is not None and math.isfinite(lag):
            yield Observation(lag, {"wsgi_sqla.replica": replica.label})


class Tracing:
    """The hooks the units call while the OpenTelemetry API is importable."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        from . import __name__ as package

        self._trace = trace
        self._kind = trace.SpanKind.INTERNAL
        self._error = trace.Status(trace.StatusCode.ERROR)
        # Proxies: they follow providers the application sets later.
        self.tracer = trace.get_tracer(package)
        meter = metrics.get_meter(package)
        self.units = meter.create_counter(
            "wsgi_sqla.units", unit="{unit}", description="Units of work by owner and outcome"
        )
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of each session's COMMIT and ROLLBACK",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.in_doubt = meter.create_counter(
            "wsgi_sqla.commits.in_doubt",
            unit="{commit}",
            description="Commits whose connection was lost during COMMIT",
        )
        self.retries = meter.create_counter(
            "wsgi_sqla.retries", unit="{retry}", description="Requests run again"
        )
        self.routed = meter.create_counter(
            "wsgi_sqla.replicas.routed", unit="{unit}", description="Routed units by route"
        )
        self.idempotent = meter.create_counter(
            "wsgi_sqla.idempotency",
            unit="{request}",
            description="Requests with an idempotency key by what became of them",
        )
        meter.create_observable_gauge(
            "wsgi_sqla.replicas.lag",
            callbacks=[_lag_observations],
            unit="s",
            description="Each replica's lag, as the lag monitor last measured it",
        )

    # -- the unit's steps ---------------------------------------------------

    def start(self) -> Record:
        """A unit starts: its span, a child of the current one."""
        return Record(self.tracer.start_span("wsgi_sqla.unit", kind=self._kind))

    def request(self, record: Record, environ: Any) -> None:
        """The unit is a request's: the attempt number a retrying middleware gave it."""
        record.attempt = environ.get("wsgi_sqla.attempt")

    def responded(self, record: Record, status: str, runs: object) -> None:
        """The request's application chose ``status``, which ``runs``' veto judges."""
        record.status = status
        record.default_veto = default_veto(runs)

    def decided(self, record: Record, commit: bool, reason: str) -> None:
        """The owner's rule (or a forced outcome) decided to ``commit`` or not, for ``reason``."""
        record.decision, record.reason = commit, reason

    def refused(self, record: Record, reason: str, status: str) -> None:
        """The unit is rolled back for ``reason`` and the request answered ``status`` instead."""
        record.outcome, record.reason, record.status = ROLLED_BACK, reason, status

    def operation(self, record: Record, name: str, session: Session, call: Callable[[], _T]) -> _T:
        """Run one session's ``COMMIT`` or ``ROLLBACK`` (``call``) as a child span, timed."""
        system = _system(session)
        attributes: dict[str, str] = {"db.system.name": system, "db.operation.name": name}
        if record.span.is_recording():
            context = self._trace.set_span_in_context(record.span)
            span = self.tracer.start_span(name, context, kind=self._trace.SpanKind.CLIENT)
            span.set_attributes(attributes)
        else:
            span = self._trace.INVALID_SPAN  # no tracer provider: the metric only
        started = time.perf_counter()
        try:
            result = call()
        except BaseException as error:
            attributes["error.type"] = type(error).__qualname__
            span.set_attribute("error.type", attributes["error.type"])
            span.record_exception(error)
            span.set_status(self._error)
            raise
        finally:
            seconds = time.perf_counter() - started
            span.end()
            self.duration.record(seconds, attributes)
            if name == "COMMIT":
                record.commit_seconds = (record.commit_seconds or 0.0) + seconds
        return result

    def rollback(self, unit: UnitOfWork) -> None:
        """Roll ``unit`` back: each session in a transaction as a ``ROLLBACK`` span."""
        record = unit._trace
        self.rolled_back(record)
        for scoped in unit.sessions:
            if is_live(scoped):
                session = scoped.registry()
                if session.in_transaction():
                    self.operation(record, "ROLLBACK", session, partial(rollback_one, scoped))
                else:
                    rollback_one(scoped)

    def committed(self, record: Record, whole: bool) -> None:
        """Every session committed; unless ``whole`` is false (a session was removed)."""
        if whole:
            record.outcome = COMMITTED
        else:
            record.outcome, record.reason = ROLLED_BACK, "removed"

    def failed(self, record: Record, outcome: str, reason: str, error: BaseException) -> None:
        """The commit failed: ``outcome`` for ``reason``, because of ``error``."""
        record.outcome, record.reason, record.error = outcome, reason, error

    def rolled_back(self, record: Record) -> None:
        """The unit rolled back: for its decision, or for the exception being handled."""
        if record.outcome is not None:
            return
        record.outcome = ROLLED_BACK
        if record.reason is None or record.reason == "ended":
            error = _in_flight()
            if error is not None:
                record.reason, record.error = "exception", error

    def idempotency(self, outcome: str) -> None:
        """The running unit's idempotency key was ``outcome``: attribute and count."""
        unit = current.get()
        record: Record | None = getattr(unit, "_trace", None)
        if record is not None:
            record.idempotency = outcome
        self.idempotent.add(1, {"wsgi_sqla.idempotency": outcome})

    def retried(self, error: BaseException) -> None:
        """A request is run again after ``error``."""
        self.retries.add(1, {"error.type": type(error).__qualname__})

    def end(self, unit: UnitOfWork) -> None:
        """The unit ended: its span's attributes, status and end; the unit counters."""
        record, route, owner = unit._trace, getattr(unit, "route", None), owner_of(unit)
        if record.ended:
            return
        record.ended = True
        outcome, reason, error = record.outcome, record.reason, record.error
        if outcome is None:
            # Neither committed nor rolled back: the application raised before it
            # used a session, or the unit decided with nothing to commit.
            error = error or _in_flight()
            if error is not None:
                outcome, reason = ROLLED_BACK, "exception"
            else:
                outcome = COMMITTED if record.decision else ROLLED_BACK
        if reason == "veto" and record.default_veto:
            reason = "status"
        reason = reason or "exception"
        span = record.span
        where = None
        if route is not None and route.on_primary:
            where = "primary" if all(route.on_primary.values()) else "replica"
            self.routed.add(1, {"wsgi_sqla.route": where})
        if span.is_recording():
            span.set_attribute("wsgi_sqla.owner", owner)
            span.set_attribute("wsgi_sqla.outcome", outcome)
            span.set_attribute("wsgi_sqla.reason", reason)
            if record.status is not None:
                code = record.status[:3]
                if code.isdigit():
                    span.set_attribute("http.response.status_code", int(code))
            if record.attempt is not None:
                span.set_attribute("wsgi_sqla.attempt", record.attempt)
            if record.idempotency is not None:
                span.set_attribute("wsgi_sqla.idempotency", record.idempotency)
            if where is not None:
                span.set_attribute("wsgi_sqla.route", where)
            if route is not None:
                _token(span, route)
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(self._error)
        span.end()
        self.units.add(
            1,
            {"wsgi_sqla.owner": owner, "wsgi_sqla.outcome": outcome, "wsgi_sqla.reason": reason},
        )
        if outcome == IN_DOUBT:
            self.in_doubt.add(1)


def _token(span: Any, route: Any) -> None:
    """What became of the client's position token: issued, kept or dropped."""
    if route.committed is not None and route.did_commit:
        span.set_attribute("wsgi_sqla.token", "issued")
    elif route.token is not None:
        span.set_attribute("wsgi_sqla.token", "dropped" if route.token_drop else "kept")


def _load() -> Tracing | None:
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return None
    return Tracing()


#: The hooks, or ``None`` when the OpenTelemetry API is not installed (checked once).
tracing: Tracing | None = _load()


def idempotency(outcome: str) -> None:
    """Report what the running unit's idempotency key did: executed, replayed or conflict.

    Sets ``wsgi_sqla.idempotency`` on the unit's span and counts it in the
    ``wsgi_sqla.idempotency`` metric. Nothing without the OpenTelemetry API.
    """
    if tracing is not None:
        tracing.idempotency(outcome)
