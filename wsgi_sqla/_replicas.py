"""Read replicas: one route per unit of work, and read-your-writes from the commit position.

The routing rules (the user's guide is ``docs/deploying/replicas.rst``):

* a unit of work is routed once, never per statement: either every session
  in ``replicas`` runs on one replica, in a read-only transaction, or every
  one runs on its primary;
* the route is chosen when a session first needs a connection, so a
  request that never touches the database costs nothing, and a replica
  that cannot be reached is skipped before the application sees it;
* a request that committed a write on a primary gets a *position token*,
  the primary's position right after its COMMIT (PostgreSQL: the WAL insert
  LSN; MariaDB: ``@@last_gtid`` of the committing connection); a later
  request carrying it uses a replica only once that replica has replayed
  the position, and the primary otherwise;
* replicas that fail are skipped for a back-off, logged once per outage;
* a background thread per process measures each replica's lag, so that a
  replica further behind than the bound is skipped by requests without a
  token too, and no request pays a round trip for it.

The owners call in through :class:`Router`: the middleware gets a
:class:`RoutedUnit` per request from :meth:`Router.request_unit` and, once
the request committed, lets :meth:`Route.respond` add or drop the token;
``transaction(db, replicas=...)`` and the Celery base get theirs from
:meth:`Router.unit`. A routed unit reads the primaries' positions right after
its commit, releases the route's connections when its sessions are removed,
and lets an after-commit hook's Celery task carry those positions
(:func:`committed_positions`). Sessions reach their route when the scoped
session's registry creates them (:meth:`Route.attach`).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import itertools
import logging
import math
import os
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.orm import Session, scoped_session

from ._fork import fork_safe, on_new_process
from ._owners import check_seconds
from ._unit import UnitOfWork, current_unit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "POSITION_COOKIE",
    "POSITION_HEADER",
    "ReplicaWriteError",
    "Route",
    "RoutedUnit",
    "Router",
    "committed_positions",
    "default_replica_reads",
    "use_primary",
]

logger = logging.getLogger("wsgi_sqla")

#: The cookie that carries the position token (HttpOnly, SameSite=Lax, Path=/).
POSITION_COOKIE = "wsgi_sqla_position"
#: The request and response header that carries it for clients without cookies.
POSITION_HEADER = "Wsgi-Sqla-Position"
_HEADER_KEY = "HTTP_" + POSITION_HEADER.upper().replace("-", "_")
_COOKIE_PREFIX = POSITION_COOKIE + "="

#: Longest token accepted; anything longer is ignored unread.
MAX_TOKEN_LENGTH = 400
_VERSION = "1"
_SIGNATURE_HEX = 32  # 128 bits of HMAC-SHA256
_PG_LSN = re.compile(r"\A[0-9A-F]{1,8}/[0-9A-F]{1,8}\Z")
_MARIADB_GTID = re.compile(r"\A[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}\Z")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_NOT_WRITES = ("SELECT", "SHOW", "EXPLAIN", "DESCRIBE")
_READ_ONLY_SQLSTATE = "25006"  # PostgreSQL read_only_sql_transaction
_READ_ONLY_MYSQL = (1792, 1290)  # in a READ ONLY transaction / --read-only


def default_replica_reads(environ: WSGIEnvironment) -> bool:
    """GET, HEAD and OPTIONS requests may read from a replica; every other method may not."""
    return environ.get("REQUEST_METHOD") in _READS


class ReplicaWriteError(RuntimeError):
    """A request routed to a read replica tried to write; nothing was written anywhere."""


# -- positions ------------------------------------------------------------------


class _Dialect:
    """How one kind of database spells and compares positions."""

    name = ""
    replica_position_sql = ""
    #: One statement, on the replica: its lag in seconds (see :meth:`parse_lag`).
    lag_sql = ""

    def valid(self, text: str) -> bool:
        raise NotImplementedError

    def reached(self, replica_position: object, token_position: str) -> bool:
        raise NotImplementedError

    def parse_replica(self, value: object) -> object:
        raise NotImplementedError

    def prepare_replica(self, dbapi_connection: Any, record: Any) -> None:
        """Make every transaction on this replica connection read-only."""

    def read_primary(self, connection: Connection) -> str | None:
        raise NotImplementedError

    def parse_lag(self, row: dict[str, object] | None) -> float | None:
        """Seconds behind, ``math.inf`` when replication is not running, ``None`` if unknown."""
        raise NotImplementedError


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class _PostgreSQL(_Dialect):
    name = "postgresql"
    replica_position_sql = "SELECT pg_last_wal_replay_lsn()::text"
    # Nothing received but not yet replayed: not behind, even if the primary
    # has been idle for hours (now() - the last replay time would say so).
    lag_sql = (
        "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
        "WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL "
        "WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
        "ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) "
        "END AS lag"
    )

    def parse_lag(self, row: dict[str, object] | None) -> float | None:
        value = None if row is None else row.get("lag")
        return None if value is None else max(0.0, float(str(value)))

    def valid(self, text: str) -> bool:
        return _PG_LSN.match(text) is not None

    def parse_replica(self, value: object) -> object:
        return None if value is None else _lsn(str(value).upper())

    def reached(self, replica_position: object, token_position: str) -> bool:
        return isinstance(replica_position, int) and replica_position >= _lsn(token_position)

    def prepare_replica(self, dbapi_connection: Any, record: Any) -> None:
        # psycopg 3 then begins with BEGIN READ ONLY; no statement of its own.
        name = "read_only" if hasattr(dbapi_connection, "read_only") else "readonly"  # psycopg2
        if getattr(dbapi_connection, name, True) is not True:
            setattr(dbapi_connection, name, True)

    def read_primary(self, connection: Connection) -> str | None:
        # The WAL position is cluster-wide, so the connection's own transaction
        # does not matter; in autocommit the driver sends no BEGIN/ROLLBACK,
        # so this is one round trip.
        dialect = connection.dialect
        dbapi_connection = connection.connection.dbapi_connection
        dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")  # type: ignore[arg-type]
        try:
            value = connection.exec_driver_sql(
                "SELECT pg_current_wal_insert_lsn()::text"
            ).scalar_one()
            connection.commit()  # ends SQLAlchemy's transaction; nothing is sent in autocommit
        finally:
            dialect.reset_isolation_level(dbapi_connection)  # type: ignore[arg-type]
        text = str(value).upper()
        return text if self.valid(text) else None


class _MariaDB(_Dialect):
    name = "mariadb"
    replica_position_sql = "SELECT @@gtid_slave_pos"
    lag_sql = "SHOW SLAVE STATUS"

    def parse_lag(self, row: dict[str, object] | None) -> float | None:
        if row is None:
            return math.inf  # not a replica (any more): nothing is applied here
        value = row.get("Seconds_Behind_Master")
        # NULL: the IO or SQL thread is not running, so it falls further behind.
        return math.inf if value is None else float(str(value))

    def valid(self, text: str) -> bool:
        return _MARIADB_GTID.match(text) is not None

    def parse_replica(self, value: object) -> object:
        positions: dict[int, int] = {}
        for gtid in str(value or "").split(","):
            parts = gtid.strip().split("-")
            if len(parts) == 3 and all(part.isdigit() for part in parts):
                positions[int(parts[0])] = int(parts[2])
        return positions

    def reached(self, replica_position: object, token_position: str) -> bool:
        domain, _server, sequence = (int(part) for part in token_position.split("-"))
        return isinstance(replica_position, dict) and replica_position.get(domain, -1) >= sequence

    def prepare_replica(self, dbapi_connection: Any, record: Any) -> None:
        # MariaDB's root bypasses read_only; a read-only transaction binds everyone.
        # Session state, set once per connection (no round trip per request).
        if not record.info.get("wsgi_sqla_read_only"):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
            finally:
                cursor.close()
            record.info["wsgi_sqla_read_only"] = True

    def read_primary(self, connection: Connection) -> str | None:
        # @@last_gtid belongs to this connection: the GTID of its last commit.
        # PyMySQL sends no BEGIN; the transaction SQLAlchemy opens here is
        # ended by the ROLLBACK that returning the connection costs anyway.
        value = connection.exec_driver_sql("SELECT @@last_gtid").scalar_one()
        text = str(value or "")
        return text if self.valid(text) else None


def _dialect_of(engine: Engine, owner: str) -> _Dialect:
    name = engine.dialect.name
    if name == "postgresql":
        return _PostgreSQL()
    if name in ("mysql", "mariadb"):
        return _MariaDB()
    raise ValueError(
        f"{owner}: replicas are supported on PostgreSQL and MariaDB, got an engine for {name!r}"
    )


# -- tokens ---------------------------------------------------------------------


class _Token:
    __slots__ = ("issued", "positions")

    def __init__(self, issued: int, positions: tuple[str, ...]) -> None:
        self.issued: int = issued
        self.positions: tuple[str, ...] = positions


# -- replicas and their health ----------------------------------------------------


class _Replica:
    """One replica engine and what this process has seen of it (shared by every router)."""

    __slots__ = (
        "__weakref__",
        "backoff",
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

    def __init__(self, engine: Engine, dialect: _Dialect) -> None:
        self.engine: Engine = engine
        self.dialect: _Dialect = dialect
        self.label: str = _label(engine)
        self.lock = threading.Lock()
        #: seconds a failure keeps it skipped (the newest router's ``replica_backoff``).
        self.backoff: float = 5.0
        #: monotonic time until which the replica is skipped; 0 when healthy.
        self.down_until: float = 0.0
        #: the newest position observed on this replica (positions only grow).
        self.position: object = None
        #: the last lag measured by the monitor (seconds; ``math.inf``: not replicating).
        self.lag: float | None = None
        self.lag_read_at: float = 0.0
        #: the tightest ``replica_max_lag`` of the routers that watch it.
        self.max_lag: float | None = None
        #: whether the last measurement was over that bound (logged when it changes).
        self.lagging = False
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

    def within(self, max_lag: float, now: float) -> bool:
        """Whether its last measured lag is at most ``max_lag`` (or not known: then yes)."""
        lag = self.lag
        if lag is None or lag <= max_lag:
            return True
        # A reading the monitor stopped refreshing (a server that runs no Python
        # threads) says nothing any more.
        return now - self.lag_read_at > max(10 * self.lag_interval(), 2.0)

    def lag_interval(self) -> float:
        """Seconds between measurements: a quarter of the tightest bound, at most 1 s."""
        return 1.0 if self.max_lag is None else min(1.0, max(self.max_lag / 4, 0.05))

    def measure(self) -> None:
        """Read the lag over the monitor's own connection; log crossing the bound once."""
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
        self.lag = self.dialect.parse_lag(
            None if row is None else dict(zip(names, row, strict=False))
        )
        self.lag_read_at = time.monotonic()
        max_lag = self.max_lag
        if max_lag is None:
            return
        over = self.lag is not None and self.lag > max_lag
        if over != self.lagging:
            self.lagging = over
            if over:
                logger.warning(
                    "read replica %s is %s behind its primary, over the %.3g s bound; reads "
                    "skip it until it catches up (logged once)",
                    self.label,
                    "not replicating, so ever further"
                    if self.lag == math.inf
                    else f"{self.lag:.3g} s",
                    max_lag,
                )
            else:
                logger.warning("read replica %s is back within its lag bound", self.label)


#: Each replica engine's shared state in this process. Weak both ways: a _Replica
#: holds its engine, and lives only as long as a router that uses it.
_replicas: weakref.WeakKeyDictionary[Engine, weakref.ref[_Replica]] = weakref.WeakKeyDictionary()
_replicas_lock = threading.Lock()


def _replica_of(engine: Engine, dialect: _Dialect, backoff: float) -> _Replica:
    with _replicas_lock:
        known = _replicas.get(engine)
        replica = known() if known is not None else None
        if replica is None:
            # A pre-forking server must not share replica connections either;
            # first, so that the monitor's pool below inherits the guard.
            fork_safe(engine)
            replica = _Replica(engine, dialect)
            _instrument_replica(engine, dialect)
            _replicas[engine] = weakref.ref(replica)
        replica.backoff = backoff
        return replica


_instrumented: weakref.WeakSet[Engine] = weakref.WeakSet()


def _instrument_replica(engine: Engine, dialect: _Dialect) -> None:
    """Every connection of ``engine`` is read-only; a write on it raises ReplicaWriteError."""
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
        known = _replicas.get(engine)
        replica = known() if known is not None else None
        label = replica.label if replica is not None else _label(engine)
        if _is_read_only_violation(original):
            statement = (context.statement or "").strip().splitlines()
            unit = current_unit()
            what = unit.route.what if isinstance(unit, RoutedUnit) else "unit of work"
            cure = (
                "Call wsgi_sqla.use_primary() in the view before its first query, or make the "
                "replica_reads predicate return False for this request"
                if what == "request"
                else "Leave out replicas= where this unit of work is defined"
            )
            raise ReplicaWriteError(
                f"this {what} was routed to a read replica ({label}), where its transaction "
                "is read-only, and it tried to write "
                f"({statement[0][:80] if statement else 'a statement'}); nothing was written. "
                f"{cure}"
            ) from original
        if context.is_disconnect and replica is not None:
            replica.fail(original)


class _LagMonitor:
    """A daemon thread per process that measures the watched replicas' lag.

    Started by the first unit routed in a process (so a pre-forking master
    that serves nothing never runs it, and never forks while it is inside
    the driver), and in a forked child of a process that ran it, as soon as
    the child is noticed. It holds the replicas weakly and ends when none is
    left. Each replica is asked one statement per interval, over a
    connection of its own, so that no request pays for it; crossing the
    bound is logged from here, once each way.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: held while measuring, and by a fork (os.register_at_fork) while it forks.
        self.measuring = threading.Lock()
        self.fork_holds = False
        self.replicas: weakref.WeakSet[_Replica] = weakref.WeakSet()
        self.started = False
        #: monotonic time of the last routed unit; the thread ends after _IDLE without one.
        self.last_used = 0.0

    def watch(self, replicas: list[_Replica], max_lag: float) -> None:
        with self.lock:
            for replica in replicas:
                if replica.monitor_pool is None:
                    # A list, so that after a fork the finalizer closes the child's pool only.
                    replica.monitor_pool = [replica.engine.pool.recreate()]
                    weakref.finalize(replica, _dispose_monitor_pool, replica.monitor_pool)
                if replica.max_lag is None or max_lag < replica.max_lag:
                    replica.max_lag = max_lag
                self.replicas.add(replica)

    def ensure_running(self) -> None:
        if self.started:
            return
        with self.lock:
            if self.started:
                return
            self.started = True
            threading.Thread(target=self.run, name="wsgi_sqla replica lag", daemon=True).start()

    def run(self) -> None:
        while True:
            with self.lock:
                replicas = list(self.replicas)
                # Idle: no thread left running in a process that routes nothing
                # any more, where a fork without Python's hooks could copy it
                # half-way through the driver. The next unit starts it again.
                # started goes false before last_used is read: a unit that
                # stamps last_used and still sees started true is then seen here.
                self.started = False
                if not replicas or time.monotonic() - self.last_used > _IDLE:
                    return
                self.started = True
            interval = 1.0
            for replica in replicas:
                # A fork waits for this (see before_fork): a child must not
                # inherit a lock the driver or OpenSSL holds half-way.
                with self.measuring:
                    replica.measure()
                interval = min(interval, replica.lag_interval())
            del replicas  # held weakly between rounds
            time.sleep(interval)

    def forget(self) -> None:
        """In a forked child: no thread runs, and the parent's monitor connections are not ours.

        The locks are made anew rather than taken: a fork that ran no Python
        hooks (uWSGI's) may have copied one held by a parent thread that does
        not exist here. A child of a process that ran the thread starts its
        own at once, while it has a single thread.
        """
        self.lock = threading.Lock()
        self.measuring = threading.Lock()
        self.fork_holds = False
        was_started, self.started = self.started, False
        for replica in list(self.replicas):
            replica.lock = threading.Lock()
            if replica.monitor_pool is not None:
                # Dropped, not closed: closing would end the parent's connections.
                replica.monitor_pool[0] = replica.monitor_pool[0].recreate()
        if was_started and self.replicas:
            self.ensure_running()

    def before_fork(self) -> None:
        if self.started:
            self.measuring.acquire()
            self.fork_holds = True

    def after_fork_in_parent(self) -> None:
        if self.fork_holds:
            self.fork_holds = False
            self.measuring.release()


def _dispose_monitor_pool(holder: list[Any]) -> None:
    try:
        holder[0].dispose()
    except Exception:
        logger.debug("disposing a replica lag monitor's pool failed", exc_info=True)


#: Seconds without a routed unit after which the lag monitor's thread ends.
_IDLE = 30.0
_monitor = _LagMonitor()
on_new_process(_monitor.forget)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_monitor.before_fork, after_in_parent=_monitor.after_fork_in_parent)


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


class _Primary:
    """One scoped session in ``replicas``: its primary engine and its replicas."""

    __slots__ = ("dialect", "engine", "index", "label", "replicas", "scoped")

    def __init__(
        self, index: int, scoped: scoped_session[Any], engine: Engine, replicas: list[_Replica]
    ) -> None:
        self.index: int = index
        self.scoped: scoped_session[Any] = scoped
        self.engine: Engine = engine
        self.label: str = _label(engine)
        self.replicas: list[_Replica] = replicas
        self.dialect: _Dialect = _dialect_of(engine, "replicas")


class Router:
    """What an owner with ``replicas`` knows: the primaries, their replicas, the rules.

    Built once by :class:`~wsgi_sqla.SessionMiddleware` (and by
    ``transaction(..., replicas=...)`` and the Celery base); every unit of
    work then gets its own :class:`Route`. What this process learns of a
    replica (failures, positions, lag) is kept per replica engine, so every
    router over the same engine shares it.
    """

    def __init__(
        self,
        replicas: Mapping[scoped_session[Any], Sequence[Engine]],
        *,
        reads: Callable[[WSGIEnvironment], bool] = default_replica_reads,
        secret: str | bytes | None = None,
        backoff: float = 5.0,
        max_age: float = 30.0,
        max_lag: float | None = 30.0,
        owner: str = "SessionMiddleware",
    ) -> None:
        if not isinstance(replicas, Mapping):
            raise TypeError(
                f"{owner}: replicas must be a mapping {{scoped_session: [replica engines]}}, "
                f"got {type(replicas).__qualname__}"
            )
        if not callable(reads):
            raise TypeError(f"{owner}: replica_reads must be a callable (environ) -> bool")
        backoff_s = check_seconds(backoff, "replica_backoff", owner)
        if not 0 <= backoff_s <= 30:
            raise ValueError(f"{owner}: replica_backoff must be between 0 and 30 s, got {backoff}")
        max_age_s = check_seconds(max_age, "position_max_age", owner)
        if not 1 <= max_age_s <= 3600:
            raise ValueError(
                f"{owner}: position_max_age must be between 1 and 3600 s, got {max_age}"
            )
        max_lag_s = None
        if max_lag is not None:
            max_lag_s = check_seconds(max_lag, "replica_max_lag", owner)
            if not 0 < max_lag_s <= 86400:
                raise ValueError(
                    f"{owner}: replica_max_lag must be above 0 and at most 86400 s (or None "
                    f"for no bound), got {max_lag}"
                )
        if secret is not None and not isinstance(secret, str | bytes):
            raise TypeError(f"{owner}: position_secret must be str, bytes or None")
        if secret is not None and len(secret) < 16:
            raise ValueError(f"{owner}: position_secret must be at least 16 characters long")
        self.reads = reads
        self.secret: bytes | None = secret.encode() if isinstance(secret, str) else secret
        self.backoff: float = backoff_s
        self.max_age: int = int(max_age_s)
        self.max_lag: float | None = max_lag_s
        self.primaries: list[_Primary] = []
        for index, (scoped, engines) in enumerate(replicas.items()):
            if not isinstance(scoped, scoped_session):
                raise TypeError(
                    f"{owner}: the keys of replicas must be scoped sessions, got {scoped!r}"
                )
            bind = scoped.session_factory.kw.get("bind")
            if not isinstance(bind, Engine):
                raise TypeError(
                    f"{owner}: a scoped session in replicas must be bound to one engine, its "
                    "primary (sessionmaker(bind=engine))"
                )
            if isinstance(engines, Engine) or not all(isinstance(e, Engine) for e in engines):
                raise TypeError(f"{owner}: replicas[{index}] must be a list of sqlalchemy Engines")
            if not engines:
                raise ValueError(f"{owner}: replicas[{index}] names no replica engine")
            dialect = _dialect_of(bind, owner)
            for engine in engines:
                if _dialect_of(engine, owner).name != dialect.name:
                    raise ValueError(
                        f"{owner}: a replica of {bind.url!r} is another kind of database"
                    )
            primary = _Primary(
                index, scoped, bind, [_replica_of(e, dialect, backoff_s) for e in engines]
            )
            self.primaries.append(primary)
            _route_session_creation(scoped)
        if max_lag_s is not None:
            _monitor.watch([r for p in self.primaries for r in p.replicas], max_lag_s)
        self._turn = itertools.count()

    # -- units ----------------------------------------------------------------

    def request_unit(
        self, sessions: tuple[scoped_session[Any], ...], environ: WSGIEnvironment
    ) -> RoutedUnit:
        """The unit of a new request: replica-eligible or not, with its token if any."""
        return self.unit(
            sessions,
            replica_ok=bool(self.reads(environ)),
            token=self._token(environ),
            what="request",
        )

    def unit(
        self,
        sessions: tuple[scoped_session[Any], ...],
        *,
        replica_ok: bool,
        token: _Token | None = None,
        what: str = "unit of work",
    ) -> RoutedUnit:
        """A unit of work over ``sessions`` routed by this router (``what`` names it in errors)."""
        if self.max_lag is not None:
            _monitor.last_used = time.monotonic()
            if not _monitor.started:
                _monitor.ensure_running()
        return RoutedUnit(sessions, Route(self, replica_ok, token, what))

    # -- tokens ---------------------------------------------------------------

    def encode(self, positions: tuple[str, ...]) -> str:
        body = f"{_VERSION}.{int(time.time())}.{'~'.join(positions)}"
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        if self.secret is None:
            return "-"
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:_SIGNATURE_HEX]

    def cookie(self, value: str, max_age: int) -> str:
        return f"{POSITION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"

    def _token(self, environ: WSGIEnvironment) -> _Token | None:
        """The request's token, or ``None`` when absent, malformed, forged or expired."""
        raw = environ.get(_HEADER_KEY)
        if not raw:
            cookies = environ.get("HTTP_COOKIE")
            if not cookies or _COOKIE_PREFIX not in cookies:
                return None
            raw = _cookie_value(cookies)
        if not raw or not isinstance(raw, str) or len(raw) > MAX_TOKEN_LENGTH:
            return None
        parts = raw.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(body)):
            return None
        return self._checked(int(parts[1]), tuple(parts[2].split("~")))

    def _checked(self, issued: int, positions: tuple[str, ...]) -> _Token | None:
        now = time.time()
        if not now - self.max_age <= issued <= now + 5:
            return None
        if len(positions) != len(self.primaries):
            return None
        for primary, position in zip(self.primaries, positions, strict=True):
            if position and not primary.dialect.valid(position):
                return None
        if not any(positions):
            return None
        return _Token(issued, positions)

    def carried(self, positions: object) -> _Token | None:
        """The token a task message carried (:func:`committed_positions`), if usable.

        Task messages come from this application's own processes, not from
        clients, so they are not signed; anything malformed is ignored.
        """
        if not isinstance(positions, Mapping) or len(positions) > 64:
            return None
        found = []
        for primary in self.primaries:
            position = positions.get(primary.label)
            found.append(position if isinstance(position, str) else "")
        return self._checked(int(time.time()), tuple(found))

    # -- replicas -------------------------------------------------------------

    def candidates(self, primary: _Primary) -> list[_Replica]:
        """Healthy replicas within the lag bound, rotated so that units spread over them."""
        now = time.monotonic()
        max_lag = self.max_lag
        healthy = []
        for replica in primary.replicas:
            if not replica.healthy(now):
                continue
            if max_lag is not None and not replica.within(max_lag, now):
                continue
            healthy.append(replica)
        if len(healthy) > 1:
            turn = next(self._turn) % len(healthy)
            healthy = healthy[turn:] + healthy[:turn]
        return healthy


def _label(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _cookie_value(cookies: str) -> str | None:
    for item in cookies.split(";"):
        name, _, value = item.strip().partition("=")
        if name == POSITION_COOKIE:
            return value.strip('"')
    return None


def _is_read_only_violation(error: BaseException) -> bool:
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if sqlstate == _READ_ONLY_SQLSTATE:
        return True
    args: tuple[object, ...] = tuple(getattr(error, "args", ()))
    return bool(args) and args[0] in _READ_ONLY_MYSQL


def _is_write(statement: str) -> bool:
    return not statement.lstrip(" \t\r\n(").upper().startswith(_NOT_WRITES)


# -- one unit of work's route --------------------------------------------------------


class Route:
    """Where one unit of work runs; chosen when its first session needs a connection."""

    __slots__ = (
        "committed",
        "connections",
        "did_commit",
        "on_primary",
        "replica_ok",
        "router",
        "token",
        "token_drop",
        "what",
        "wrote",
    )

    def __init__(
        self, router: Router, replica_ok: bool, token: _Token | None, what: str = "unit of work"
    ) -> None:
        self.router: Router = router
        self.what: str = what
        self.replica_ok: bool = replica_ok
        self.token: _Token | None = token
        #: whether a token this request carried can be dropped (every replica has it).
        self.token_drop: bool = False
        #: the primaries' positions after the unit's last commit of a write, if any.
        self.committed: tuple[str, ...] | None = None
        #: whether the unit's sessions committed (a read-only unit too).
        self.did_commit: bool = False
        #: per primary index: the connection the unit runs on.
        self.connections: dict[int, Connection] = {}
        #: per primary index: whether the connection is on the primary.
        self.on_primary: dict[int, bool] = {}
        #: primary indexes that saw a write statement.
        self.wrote: set[int] = set()

    # -- hooks ----------------------------------------------------------------

    def attach(self, session: Session, primary: _Primary) -> None:
        """A session of ``primary`` was created for this unit: bind it through the route."""
        session.get_bind = functools.partial(self._bind, primary)  # type: ignore[method-assign]
        # The replica check may have begun the connection's transaction; the
        # session then makes it its own (commit, rollback) instead of nesting.
        session.join_transaction_mode = "control_fully"

    def use_primary(self) -> None:
        if self.connections and not all(self.on_primary.values()):
            raise RuntimeError(
                "use_primary(): this request already ran a query on a read replica; call "
                "use_primary() in the view before its first query"
            )
        self.replica_ok = False

    def read_positions(self) -> None:
        """After a commit: the primaries' positions, if the unit wrote (:attr:`committed`)."""
        self.did_commit = True
        if not self.wrote:
            return
        positions = []
        for primary in self.router.primaries:
            position = None
            if primary.index in self.wrote:
                connection = self.connections.get(primary.index)
                if connection is not None and not connection.closed:
                    try:
                        position = primary.dialect.read_primary(connection)
                    except Exception:
                        logger.exception("reading the primary's position after COMMIT failed")
            positions.append(position or "")
        self.wrote.clear()
        self.committed = tuple(positions) if any(positions) else None

    def respond(self, status: str, headers: list[tuple[str, str]]) -> None:
        """The request committed with ``status``: add the token headers it calls for.

        A token for a committed write answered below 400; a Max-Age=0 cookie
        and an empty header when the token it carried is no longer needed.
        """
        if status[:1] not in ("1", "2", "3"):
            return
        router = self.router
        if self.committed is not None:
            value = router.encode(self.committed)
            headers.append(("Set-Cookie", router.cookie(value, router.max_age)))
            headers.append((POSITION_HEADER, value))
        elif self.token is not None and self.token_drop:
            headers.append(("Set-Cookie", router.cookie("", 0)))
            headers.append((POSITION_HEADER, ""))

    def start_response(
        self,
        server_start_response: StartResponse,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,
    ) -> Callable[[bytes], object]:
        """The server's ``start_response``, after :meth:`respond` if the unit committed."""
        if self.did_commit:
            self.respond(status, headers)
        return server_start_response(status, headers, exc_info)

    def release(self) -> None:
        """Return the unit's connections to their pools (after its sessions were closed)."""
        connections, self.connections = self.connections, {}
        for connection in connections.values():
            try:
                connection.close()
            except Exception:
                logger.exception("closing a routed connection failed; it is discarded")

    # -- choosing -------------------------------------------------------------

    def _bind(self, primary: _Primary, *args: Any, **kw: Any) -> Connection:
        connection = self.connections.get(primary.index)
        if connection is None or connection.closed:
            connection = self._choose(primary)
            self.connections[primary.index] = connection
        return connection

    def _choose(self, primary: _Primary) -> Connection:
        if self.replica_ok:
            connection = self._replica(primary)
            if connection is not None:
                self.on_primary[primary.index] = False
                return connection
        connection = primary.engine.connect()
        self.on_primary[primary.index] = True
        index = primary.index

        @event.listens_for(connection, "before_cursor_execute")
        def saw(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if _is_write(statement):
                self.wrote.add(index)

        return connection

    def _replica(self, primary: _Primary) -> Connection | None:
        router = self.router
        wanted = self.token.positions[primary.index] if self.token is not None else ""
        candidates = router.candidates(primary)
        dialect = primary.dialect
        # In turn order: a replica already seen at the position needs no check;
        # otherwise at most one replica is asked for its position, and one seen
        # caught up (or the primary) takes the request if it is behind. Asking
        # the replicas in turn is also how the token learns it can be dropped.
        checked = False
        chosen: Connection | None = None
        for replica in candidates:
            needs_check = bool(wanted) and not dialect.reached(replica.position, wanted)
            if needs_check and checked:
                continue
            try:
                connection = replica.engine.connect()
            except exc.SQLAlchemyError as error:
                replica.fail(error)
                continue
            if needs_check:
                checked = True
                try:
                    value = connection.exec_driver_sql(dialect.replica_position_sql).scalar()
                except exc.SQLAlchemyError as error:
                    connection.close()
                    replica.fail(error)
                    continue
                replica.observe(dialect.parse_replica(value))
                if not dialect.reached(replica.position, wanted):
                    connection.close()
                    continue
            replica.recovered()
            chosen = connection
            break
        if self.token is not None and chosen is not None:
            # Dropped only once EVERY replica was seen at the position: after one
            # caught-up replica, another may still lag (GitLab #413203).
            self.token_drop = all(
                not position or all(p.dialect.reached(r.position, position) for r in p.replicas)
                for p, position in zip(router.primaries, self.token.positions, strict=True)
            )
        return chosen


class RoutedUnit(UnitOfWork):
    """A unit of work with a route: its sessions run where the route says.

    The rules are :class:`~wsgi_sqla.UnitOfWork`'s. A commit that wrote is
    followed by reading the primaries' positions; the after-commit hooks see
    them through :func:`committed_positions`; removing the sessions also
    returns the connections the route handed them to their pools.
    """

    __slots__ = ("route",)

    def __init__(self, sessions: tuple[scoped_session[Any], ...], route: Route) -> None:
        super().__init__(sessions)
        self.route: Route = route

    def commit(self) -> bool:
        """:meth:`UnitOfWork.commit`, then the primaries' positions if it wrote."""
        whole = super().commit()
        self.route.read_positions()
        return whole

    def remove(self) -> None:
        """Close the sessions, then release the route's connections."""
        try:
            super().remove()
        finally:
            self.route.release()

    def end(self) -> None:
        """:meth:`UnitOfWork.end`, with :func:`committed_positions` set for the hooks."""
        route = self.route
        if route.committed is None:
            super().end()
            return
        positions = {
            primary.label: position
            for primary, position in zip(route.router.primaries, route.committed, strict=True)
            if position
        }
        token = _committed.set(positions)
        try:
            super().end()
        finally:
            _committed.reset(token)


#: The positions of the unit whose after-commit hooks are running, by primary.
_committed: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "wsgi_sqla_committed_positions", default=None
)


def committed_positions() -> dict[str, str] | None:
    """In an after-commit hook of a unit that wrote: the primaries' positions after it.

    ``{primary engine URL, password hidden: position}``; ``None`` anywhere
    else. :class:`wsgi_sqla.celery.SessionTask` sends it with a task enqueued
    from such a hook, so that a worker reading from replicas sees that write.
    """
    return _committed.get()


# -- creating sessions through the route ---------------------------------------------


def _route_session_creation(scoped: scoped_session[Any]) -> None:
    """Make ``scoped``'s registry hand each new Session to the running unit's route."""
    registry = scoped.registry
    create = registry.createfunc
    if getattr(create, "_wsgi_sqla_routed", False):
        return

    def routed() -> Any:
        session = create()
        unit = current_unit()
        if isinstance(unit, RoutedUnit):
            route = unit.route
            for primary in route.router.primaries:
                if primary.scoped is scoped:
                    route.attach(session, primary)
                    break
        return session

    routed._wsgi_sqla_routed = True  # type: ignore[attr-defined]
    registry.createfunc = routed


def use_primary() -> None:
    """Run the current request on the primary, even if its predicate allowed a replica.

    Call it in a view before the request's first query, for a GET that must
    write or must read the very latest data. Without ``replicas`` it does
    nothing. Raises :class:`RuntimeError` when no unit of work is running,
    or when the request already queried a replica.
    """
    unit = current_unit()
    if unit is None:
        raise RuntimeError(
            "wsgi_sqla.use_primary() needs a running unit of work: call it inside a request "
            "wrapped by SessionMiddleware, a wsgi_sqla.transaction() block or a "
            "wsgi_sqla.celery task"
        )
    if isinstance(unit, RoutedUnit):
        unit.route.use_primary()
