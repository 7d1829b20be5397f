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
* replicas that fail are skipped for a back-off, logged once per outage.

The middleware calls in through two hooks only: :meth:`Router.route` (a new
request gets a :class:`RoutedUnit`, whose ``remove()`` also releases the
route's connections) and :meth:`Router.finish` (the request committed:
maybe issue or drop a token). Sessions reach their route when the scoped
session's registry creates them (:meth:`Route.attach`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.orm import Session, scoped_session

from ._fork import fork_safe
from ._unit import UnitOfWork, current_unit

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "POSITION_COOKIE",
    "POSITION_HEADER",
    "ReplicaWriteError",
    "Route",
    "RoutedUnit",
    "Router",
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
    primary_position_sql = ""
    replica_position_sql = ""

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


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class _PostgreSQL(_Dialect):
    name = "postgresql"
    replica_position_sql = "SELECT pg_last_wal_replay_lsn()::text"

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
    """One replica engine and what this process has seen of it."""

    __slots__ = ("down_until", "engine", "label", "lock", "position")

    def __init__(self, engine: Engine, label: str) -> None:
        self.engine = engine
        self.label = label
        self.lock = threading.Lock()
        #: monotonic time until which the replica is skipped; 0 when healthy.
        self.down_until = 0.0
        #: the newest position observed on this replica (positions only grow).
        self.position: object = None

    def observe(self, position: object) -> None:
        with self.lock:
            self.position = position

    def healthy(self, now: float) -> bool:
        return self.down_until <= now

    def fail(self, error: BaseException, backoff: float) -> None:
        with self.lock:
            first = self.down_until == 0.0
            self.down_until = time.monotonic() + backoff
        if first:
            logger.warning(
                "read replica %s failed (%s: %s); it is skipped for %.3g s and its requests "
                "go to another replica or the primary (logged once per outage)",
                self.label,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
                backoff,
            )

    def recovered(self) -> None:
        if self.down_until:
            with self.lock:
                was_down, self.down_until = self.down_until != 0.0, 0.0
            if was_down:
                logger.warning("read replica %s is reachable again and serves reads", self.label)


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

    __slots__ = ("dialect", "engine", "index", "replicas", "scoped")

    def __init__(
        self, index: int, scoped: scoped_session[Any], engine: Engine, replicas: list[_Replica]
    ) -> None:
        self.index: int = index
        self.scoped: scoped_session[Any] = scoped
        self.engine: Engine = engine
        self.replicas: list[_Replica] = replicas
        self.dialect: _Dialect = _dialect_of(engine, "SessionMiddleware")


class Router:
    """What a middleware with ``replicas`` knows: the primaries, their replicas, the rules.

    Built once by :class:`~wsgi_sqla.SessionMiddleware`; every request then
    gets its own :class:`Route` from :meth:`route`.
    """

    def __init__(
        self,
        replicas: Mapping[scoped_session[Any], Sequence[Engine]],
        *,
        reads: Callable[[WSGIEnvironment], bool],
        secret: str | bytes | None,
        backoff: float,
        max_age: float,
    ) -> None:
        owner = "SessionMiddleware"
        if not isinstance(replicas, Mapping):
            raise TypeError(
                f"{owner}: replicas must be a mapping {{scoped_session: [replica engines]}}, "
                f"got {type(replicas).__qualname__}"
            )
        if not callable(reads):
            raise TypeError(f"{owner}: replica_reads must be a callable (environ) -> bool")
        if isinstance(backoff, bool) or not isinstance(backoff, int | float):
            raise TypeError(f"{owner}: replica_backoff must be a number of seconds")
        if not 0 <= backoff <= 30:
            raise ValueError(f"{owner}: replica_backoff must be between 0 and 30 s, got {backoff}")
        if isinstance(max_age, bool) or not isinstance(max_age, int | float):
            raise TypeError(f"{owner}: position_max_age must be a number of seconds")
        if not 1 <= max_age <= 3600:
            raise ValueError(
                f"{owner}: position_max_age must be between 1 and 3600 s, got {max_age}"
            )
        if secret is not None and not isinstance(secret, str | bytes):
            raise TypeError(f"{owner}: position_secret must be str, bytes or None")
        if secret is not None and len(secret) < 16:
            raise ValueError(f"{owner}: position_secret must be at least 16 characters long")
        self.reads = reads
        self.secret: bytes | None = secret.encode() if isinstance(secret, str) else secret
        self.backoff: float = float(backoff)
        self.max_age: int = int(max_age)
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
            primary = _Primary(
                index,
                scoped,
                bind,
                [_Replica(engine, _label(engine)) for engine in engines],
            )
            for replica in primary.replicas:
                if _dialect_of(replica.engine, owner).name != primary.dialect.name:
                    raise ValueError(
                        f"{owner}: a replica of {bind.url!r} is another kind of database"
                    )
                self._instrument_replica(replica, primary.dialect)
                # A pre-forking server must not share replica connections either.
                fork_safe(replica.engine)
            self.primaries.append(primary)
            _route_session_creation(scoped)
        self._turn = itertools.count()

    # -- hooks ----------------------------------------------------------------

    def route(self, environ: WSGIEnvironment) -> Route:
        """The route of a new request: replica-eligible or not, and its token if any."""
        return Route(self, bool(self.reads(environ)), self._token(environ))

    def finish(self, route: Route, status: str, headers: list[tuple[str, str]]) -> None:
        """The request committed with ``status``: add the token headers it calls for."""
        if status[:1] not in ("1", "2", "3"):
            return
        positions = route.positions_after_commit()
        if positions is not None:
            value = self._encode(positions)
            headers.append(("Set-Cookie", self._cookie(value, self.max_age)))
            headers.append((POSITION_HEADER, value))
        elif route.token is not None and route.token_drop:
            headers.append(("Set-Cookie", self._cookie("", 0)))
            headers.append((POSITION_HEADER, ""))

    # -- tokens ---------------------------------------------------------------

    def _encode(self, positions: tuple[str, ...]) -> str:
        body = f"{_VERSION}.{int(time.time())}.{'~'.join(positions)}"
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        if self.secret is None:
            return "-"
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:_SIGNATURE_HEX]

    def _cookie(self, value: str, max_age: int) -> str:
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

    # -- replica engines ------------------------------------------------------

    def _instrument_replica(self, replica: _Replica, dialect: _Dialect) -> None:
        engine = replica.engine
        if engine.pool.__dict__.get("_wsgi_sqla_replica"):
            return
        engine.pool.__dict__["_wsgi_sqla_replica"] = True

        @event.listens_for(engine.pool, "checkout")
        def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if _socket_closed(dbapi_connection):
                # The pool discards this connection and tries a new one.
                raise exc.DisconnectionError("the replica closed this pooled connection")
            dialect.prepare_replica(dbapi_connection, record)

        @event.listens_for(engine, "handle_error")
        def handle_error(context: Any) -> None:
            original = context.original_exception
            if _is_read_only_violation(original):
                statement = (context.statement or "").strip().splitlines()
                raise ReplicaWriteError(
                    "SessionMiddleware: this request was routed to a read replica "
                    f"({replica.label}), where its transaction is read-only, and it tried to "
                    f"write ({statement[0][:80] if statement else 'a statement'}); nothing was "
                    "written. Call wsgi_sqla.use_primary() in the view before its first query, "
                    "or make the replica_reads predicate return False for this request"
                ) from original
            if context.is_disconnect:
                replica.fail(original, self.backoff)

    def candidates(self, primary: _Primary) -> list[_Replica]:
        """Healthy replicas, rotated so that requests spread over them."""
        now = time.monotonic()
        replicas = primary.replicas
        healthy = [r for r in replicas if r.healthy(now)]
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
        "connections",
        "on_primary",
        "replica_ok",
        "router",
        "token",
        "token_drop",
        "wrote",
    )

    def __init__(self, router: Router, replica_ok: bool, token: _Token | None) -> None:
        self.router: Router = router
        self.replica_ok: bool = replica_ok
        self.token: _Token | None = token
        #: whether a token this request carried can be dropped (every replica has it).
        self.token_drop: bool = False
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

    def positions_after_commit(self) -> tuple[str, ...] | None:
        """The primaries' positions after the commit, if the unit wrote; else ``None``."""
        if not self.wrote:
            return None
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
        return tuple(positions) if any(positions) else None

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
                replica.fail(error, router.backoff)
                continue
            if needs_check:
                checked = True
                try:
                    value = connection.exec_driver_sql(dialect.replica_position_sql).scalar()
                except exc.SQLAlchemyError as error:
                    connection.close()
                    replica.fail(error, router.backoff)
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

    The rules are :class:`~wsgi_sqla.UnitOfWork`'s; removing the sessions
    also returns the connections the route handed them to their pools.
    """

    __slots__ = ("route",)

    def __init__(self, sessions: tuple[scoped_session[Any], ...], route: Route) -> None:
        super().__init__(sessions)
        self.route = route

    def remove(self) -> None:
        """Close the sessions, then release the route's connections."""
        try:
            super().remove()
        finally:
            self.route.release()


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
