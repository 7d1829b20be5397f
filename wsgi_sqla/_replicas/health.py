"""What this process knows of each replica: failures, the position seen, the lag.

A :class:`Replica` is one replica engine as one :class:`~wsgi_sqla.Replicas`
sees it. The state lives on the ``Replicas`` object, not per engine in a
module registry, so that every owner given the same ``Replicas`` (the
middleware, ``transaction()`` blocks, a Celery base) shares one back-off
per replica and one lag bound, and no owner can change another's settings.

The engine events are per engine, installed once whatever the number of
``Replicas`` over it: every pooled connection is made read-only when it is
checked out (and dropped if the server closed it), and a write refused there
becomes a :class:`ReplicaWriteError` that says what to change. The listener
finds the state to mark as failed through the running unit's route
(``current_unit().route``), which is the route that used the connection.
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event, exc

from .._unit import current_unit
from .dialects import Dialect, is_read_only_violation

__all__ = ["Replica", "ReplicaWriteError", "instrument", "label"]

logger = logging.getLogger("wsgi_sqla")


class ReplicaWriteError(RuntimeError):
    """A request routed to a read replica tried to write; nothing was written anywhere."""


def label(engine: Engine) -> str:
    """The engine's URL with its password hidden: how logs and task messages name it."""
    return engine.url.render_as_string(hide_password=True)


class Replica:
    """One replica engine and what this process has seen of it, for one ``Replicas``."""

    __slots__ = (
        "__weakref__",
        "backoff",
        "caught_up_at",
        "dialect",
        "down_until",
        "engine",
        "label",
        "lag",
        "lag_read_at",
        "lagging",
        "lock",
        "max_lag",
        "monitor_pool",
        "position",
    )

    def __init__(
        self, engine: Engine, dialect: Dialect, backoff: float, max_lag: float | None
    ) -> None:
        self.engine: Engine = engine
        self.dialect: Dialect = dialect
        self.label: str = label(engine)
        self.lock: threading.Lock = threading.Lock()
        #: seconds a failure keeps it skipped (``Replicas(backoff=...)``).
        self.backoff: float = backoff
        #: monotonic time until which the replica is skipped; 0 when healthy.
        self.down_until: float = 0.0
        #: the newest position observed on this replica (positions only grow).
        self.position: object = None
        #: the last lag measured by the monitor (seconds; ``math.inf``: not replicating).
        self.lag: float | None = None
        self.lag_read_at: float = 0.0
        #: monotonic time of the last measurement that found nothing waiting to be applied.
        self.caught_up_at: float | None = None
        #: ``Replicas(max_lag=...)``: further behind than this, it serves no read.
        self.max_lag: float | None = max_lag
        #: whether the last measurement was over that bound (logged when it changes).
        self.lagging: bool = False
        #: ``[pool]``: the monitor's own pool, so its statements are nobody's request's.
        self.monitor_pool: list[Any] | None = None

    def observe(self, position: object) -> None:
        with self.lock:
            self.position = position

    def healthy(self, now: float) -> bool:
        return self.down_until <= now

    def fail(self, error: BaseException) -> None:
        with self.lock:
            first = self.down_until == 0.0
            self.down_until = time.monotonic() + self.backoff
        if first:
            logger.warning(
                "read replica %s failed (%s: %s); it is skipped for %.3g s and its requests "
                "go to another replica or the primary (logged once per outage)",
                self.label,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
                self.backoff,
            )

    def recovered(self) -> None:
        if self.down_until:
            with self.lock:
                was_down, self.down_until = self.down_until != 0.0, 0.0
            if was_down:
                logger.warning("read replica %s is reachable again and serves reads", self.label)

    def within(self, now: float) -> bool:
        """Whether its last measured lag is within the bound (or not known: then yes)."""
        lag, max_lag = self.lag, self.max_lag
        if max_lag is None or lag is None or lag <= max_lag:
            return True
        # A reading the monitor stopped refreshing (a server that runs no Python
        # threads) says nothing any more.
        return now - self.lag_read_at > max(10 * self.lag_interval(), 2.0)

    def lag_interval(self) -> float:
        """Seconds between measurements: a quarter of the bound, at most 1 s."""
        return 1.0 if self.max_lag is None else min(1.0, max(self.max_lag / 4, 0.05))

    def measure(self) -> None:
        """Read the lag over the monitor's own connection; log crossing the bound once.

        Where the server counts the lag from the last transaction it applied
        (``Dialect.lag_from_last_applied``), what waits now arrived after the
        last measurement that found the replica caught up, so the lag is no
        more than the time since then. Without that, the first write after a
        quiet spell made a replica look as far behind as the spell was long,
        for as long as it took to apply (a bound crossed, and logged, for
        nothing). Until the monitor has seen the replica caught up once, the
        server's figure stands.
        """
        holder = self.monitor_pool
        if holder is None:
            return
        try:
            connection = holder[0].connect()
            try:
                cursor = connection.cursor()
                cursor.execute(self.dialect.lag_sql)
                row = cursor.fetchone()
                names = [column[0] for column in cursor.description or ()]
                cursor.close()
            finally:
                connection.close()
        except Exception as error:
            # Unreachable: the requests' own health check handles that.
            logger.debug("measuring the lag of %s failed: %s", self.label, error)
            self.lag = None
            return
        lag = self.dialect.parse_lag(None if row is None else dict(zip(names, row, strict=False)))
        now = time.monotonic()
        if lag == 0.0:
            self.caught_up_at = now
        elif (
            lag is not None and self.caught_up_at is not None and self.dialect.lag_from_last_applied
        ):
            lag = min(lag, now - self.caught_up_at)
        self.lag = lag
        self.lag_read_at = now
        self._log_bound()

    def _log_bound(self) -> None:
        max_lag = self.max_lag
        if max_lag is None:
            return
        over = self.lag is not None and self.lag > max_lag
        if over == self.lagging:
            return
        self.lagging = over
        if not over:
            logger.warning("read replica %s is back within its lag bound", self.label)
            return
        logger.warning(
            "read replica %s is %s behind its primary, over the %.3g s bound; reads "
            "skip it until it catches up (logged once)",
            self.label,
            "not replicating, so ever further" if self.lag == math.inf else f"{self.lag:.3g} s",
            max_lag,
        )


_instrumented: weakref.WeakSet[Engine] = weakref.WeakSet()
_instrumented_lock = threading.Lock()


def instrument(engine: Engine, dialect: Dialect) -> None:
    """Every connection of ``engine`` is read-only; a write on it raises ReplicaWriteError."""
    with _instrumented_lock:
        if engine in _instrumented:
            return
        _instrumented.add(engine)

    @event.listens_for(engine.pool, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if _socket_closed(dbapi_connection):
            # The pool discards this connection and tries a new one.
            raise exc.DisconnectionError("the replica closed this pooled connection")
        dialect.prepare_replica(dbapi_connection, record)

    @event.listens_for(engine, "handle_error")
    def handle_error(context: Any) -> None:
        original = context.original_exception
        # The running unit's route used this connection (Route.replica_for, Route.what).
        route = getattr(current_unit(), "route", None)
        replica: Replica | None = route.replica_for(engine) if route is not None else None
        if is_read_only_violation(original):
            raise _write_error(context, route, engine) from original
        if context.is_disconnect and replica is not None:
            replica.fail(original)


def _write_error(context: Any, route: Any, engine: Engine) -> ReplicaWriteError:
    statement = (context.statement or "").strip().splitlines()
    what = route.what if route is not None else "unit of work"
    cure = (
        "Call wsgi_sqla.use_primary() in the view before its first query, or make the "
        "reads predicate of its Replicas return False for this request"
        if what == "request"
        else "Leave out replicas= where this unit of work is defined"
    )
    return ReplicaWriteError(
        f"this {what} was routed to a read replica ({label(engine)}), where its transaction "
        "is read-only, and it tried to write "
        f"({statement[0][:80] if statement else 'a statement'}); nothing was written. "
        f"{cure}"
    )


def _socket_closed(dbapi_connection: Any) -> bool:
    """An idle connection whose socket is readable was closed by the server (no round trip)."""
    try:
        fileno = dbapi_connection.fileno() if hasattr(dbapi_connection, "fileno") else None
        if fileno is None:
            sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
            if sock is None:
                return False
            fileno = sock.fileno()
        if fileno < 0:
            return True
        readable, _, _ = select.select([fileno], [], [], 0)
    except (OSError, ValueError, AttributeError):
        return True
    return bool(readable)
