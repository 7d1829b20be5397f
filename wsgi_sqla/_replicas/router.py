"""``Replicas``: the read-replica configuration, built once and shared by its owners.

An application builds one :class:`Replicas` at import and gives it to every
owner of units of work that may read from replicas: the middleware, the
``transaction()`` blocks of its scripts, its Celery base. Its arguments are
checked once, here, and it holds the state of what this process learns
about the replicas (each one's back-off, last position seen, lag), so every
owner given the same object shares one back-off per replica, one lag bound
and one measurement by the process's lag monitor. Building a
``transaction(db, replicas=...)`` costs nothing and changes nothing of it.

Building it opens no connection. It wraps each scoped session's factory so
that sessions reach their unit's route, makes the replica engines read-only
and :func:`~wsgi_sqla.fork_safe`, and, with a lag bound, hands the replicas
to the lag monitor, whose thread starts with the first routed unit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

from .._fork import fork_safe
from .._owners import check_seconds
from .dialects import Dialect, dialect_of
from .health import Replica, instrument, label
from .monitor import monitor
from .route import Route
from .tokens import Token, Tokens
from .unit import RoutedUnit, route_session_creation

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["Primary", "Replicas", "check_replicas", "default_replica_reads"]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def default_replica_reads(environ: WSGIEnvironment) -> bool:
    """GET, HEAD and OPTIONS requests may read from a replica; every other method may not."""
    return environ.get("REQUEST_METHOD") in _READS


class Primary:
    """One scoped session of a ``Replicas``: its primary engine and its replicas."""

    __slots__ = ("dialect", "engine", "index", "label", "replicas", "scoped")

    def __init__(
        self,
        index: int,
        scoped: scoped_session[Any],
        engine: Engine,
        dialect: Dialect,
        replicas: list[Replica],
    ) -> None:
        self.index: int = index
        self.scoped: scoped_session[Any] = scoped
        self.engine: Engine = engine
        self.label: str = label(engine)
        self.dialect: Dialect = dialect
        self.replicas: list[Replica] = replicas


class Replicas:
    """Read replicas of each scoped session's primary, and the rules for using them.

    ::

        replicas = Replicas({db: [replica_1, replica_2]}, secret=os.environ["POSITION_SECRET"])
        app.wsgi_app = SessionMiddleware(app.wsgi_app, db, replicas=replicas)
        Task = task_base(db, replicas=replicas)
        with transaction(db, replicas=replicas): ...

    Give the same object to every owner: they then share one back-off per
    replica, one lag bound and one lag measurement. Building it opens no
    connection. See the "Read replicas" page for the rules.

    :param mapping: ``{scoped_session: [replica_engine, ...]}``: the engines
        of each session's primary's replicas (the session must be bound to
        one engine, its primary; PostgreSQL or MariaDB). A request that
        ``reads`` accepts runs all its work on one replica, in a read-only
        transaction, unless it calls :func:`~wsgi_sqla.use_primary` first;
        every other request runs on the primary, and one that commits a
        write answers with a position token (cookie
        :data:`~wsgi_sqla.POSITION_COOKIE` and header
        :data:`~wsgi_sqla.POSITION_HEADER`) that keeps the client's reads on
        replicas that have replayed that write. A ``transaction()`` block
        or a Celery task given these replicas runs on one of them,
        read-only.
    :param reads: ``reads(environ) -> bool``, which requests may read from a
        replica; defaults to :func:`~wsgi_sqla.default_replica_reads` (GET,
        HEAD, OPTIONS). Blocks and tasks always may.
    :param secret: when set (at least 16 characters, the same in every
        process), tokens are signed with HMAC-SHA256 and an unsigned or
        badly signed one is ignored; without it a forged token can only send
        the forger's own reads to the primary.
    :param backoff: seconds a replica that failed is skipped before it is
        tried again (0 to 30, default 5).
    :param token_max_age: seconds a position token stays valid (1 to 3600,
        default 30).
    :param max_lag: a replica measured more than this many seconds behind
        its primary is skipped by units without a token too (above 0, at
        most 86400, default 30; ``None`` turns the bound and its background
        measurement off).
    :raises TypeError: when ``mapping`` is not a mapping of scoped sessions
        to lists of engines, ``reads`` is not callable, a number of seconds
        is not a number, or ``secret`` is neither ``str`` nor ``bytes``.
    :raises ValueError: when a list of engines is empty, a replica is
        another kind of database than its primary, the database is neither
        PostgreSQL nor MariaDB, a number of seconds is out of range, or
        ``secret`` is shorter than 16 characters.
    """

    def __init__(
        self,
        mapping: Mapping[scoped_session[Any], Sequence[Engine]],
        /,
        *,
        reads: Callable[[WSGIEnvironment], bool] = default_replica_reads,
        secret: str | bytes | None = None,
        backoff: float = 5.0,
        token_max_age: float = 30.0,
        max_lag: float | None = 30.0,
    ) -> None:
        if not isinstance(mapping, Mapping):
            raise TypeError(
                "Replicas: the replicas must be a mapping {scoped_session: [replica engines]}, "
                f"got {type(mapping).__qualname__}"
            )
        if not callable(reads):
            raise TypeError("Replicas: reads must be a callable (environ) -> bool")
        self.reads: Callable[[WSGIEnvironment], bool] = reads
        self.backoff: float = _seconds(
            backoff, "backoff", lambda s: 0 <= s <= 30, "between 0 and 30 s"
        )
        self.token_max_age: float = _seconds(
            token_max_age, "token_max_age", lambda s: 1 <= s <= 3600, "between 1 and 3600 s"
        )
        self.max_lag: float | None = None
        if max_lag is not None:
            self.max_lag = _seconds(
                max_lag,
                "max_lag",
                lambda s: 0 < s <= 86400,
                "above 0 and at most 86400 s (or None for no bound)",
            )
        self.secret: bytes | None = _checked_secret(secret)
        self.primaries: list[Primary] = [
            self._primary(index, scoped, engines)
            for index, (scoped, engines) in enumerate(mapping.items())
        ]
        for primary in self.primaries:
            route_session_creation(primary.scoped)
        if self.max_lag is not None:
            monitor.watch(r for p in self.primaries for r in p.replicas)
        self.tokens: Tokens = Tokens(
            self.secret,
            int(self.token_max_age),
            [p.dialect.valid for p in self.primaries],
            [p.label for p in self.primaries],
        )
        #: Whose turn it is among the healthy replicas (shared by every unit).
        self.turns: itertools.count[int] = itertools.count()

    def _primary(self, index: int, scoped: object, engines: object) -> Primary:
        if not isinstance(scoped, scoped_session):
            raise TypeError(f"Replicas: the keys must be scoped sessions, got {scoped!r}")
        bind = scoped.session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError(
                "Replicas: a scoped session must be bound to one engine, its primary "
                "(sessionmaker(bind=engine))"
            )
        if not isinstance(engines, Sequence) or not all(isinstance(e, Engine) for e in engines):
            raise TypeError(f"Replicas: replicas[{index}] must be a list of sqlalchemy Engines")
        if not engines:
            raise ValueError(f"Replicas: replicas[{index}] names no replica engine")
        dialect = dialect_of(bind)
        replicas = []
        for engine in engines:
            if dialect_of(engine).name != dialect.name:
                raise ValueError(f"Replicas: a replica of {bind.url!r} is another kind of database")
            # A pre-forking server must not share replica connections either;
            # before the monitor's pool is made, so that it inherits the guard.
            fork_safe(engine)
            instrument(engine, dialect)
            replicas.append(Replica(engine, dialect, self.backoff, self.max_lag))
        return Primary(index, scoped, bind, dialect, replicas)

    def __repr__(self) -> str:
        names = ", ".join(f"{p.label}: {len(p.replicas)}" for p in self.primaries)
        return f"Replicas({{{names}}}, max_lag={self.max_lag}, backoff={self.backoff})"

    # -- units ----------------------------------------------------------------

    def request_unit(
        self, sessions: tuple[scoped_session[Any], ...], environ: WSGIEnvironment
    ) -> RoutedUnit:
        """The unit of a new request: replica-eligible or not, with its token if any."""
        return self.unit(
            sessions,
            replica_ok=bool(self.reads(environ)),
            token=self.tokens.read(environ),
            what="request",
        )

    def unit(
        self,
        sessions: tuple[scoped_session[Any], ...],
        *,
        replica_ok: bool,
        token: Token | None = None,
        what: str = "unit of work",
    ) -> RoutedUnit:
        """A unit of work over ``sessions`` routed by these replicas (``what`` names it)."""
        if self.max_lag is not None:
            monitor.used()
        return RoutedUnit(sessions, Route(self, replica_ok, token, what))

    def task_unit(self, sessions: tuple[scoped_session[Any], ...], positions: object) -> RoutedUnit:
        """The unit of a Celery task whose message carried ``positions`` (or nothing)."""
        return self.unit(
            sessions, replica_ok=True, token=self.tokens.carried(positions), what="task"
        )


def _seconds(value: object, name: str, ok: Callable[[float], bool], wanted: str) -> float:
    seconds = check_seconds(value, name, "Replicas")
    if not ok(seconds):
        raise ValueError(f"Replicas: {name} must be {wanted}, got {value}")
    return seconds


def _checked_secret(secret: object) -> bytes | None:
    if secret is None:
        return None
    if not isinstance(secret, str | bytes):
        raise TypeError("Replicas: secret must be str, bytes or None")
    if len(secret) < 16:
        raise ValueError("Replicas: secret must be at least 16 characters long")
    return secret.encode() if isinstance(secret, str) else secret


def check_replicas(value: object, owner: str) -> Replicas | None:
    """``replicas=`` of an owner: a :class:`Replicas` or ``None``; a mapping says how."""
    if value is None or isinstance(value, Replicas):
        return value
    if isinstance(value, Mapping):
        raise TypeError(
            f"{owner}: replicas= takes a Replicas object, built once and shared: write "
            "replicas=Replicas({db: [...]})"
        )
    raise TypeError(
        f"{owner}: replicas must be a wsgi_sqla.Replicas, got {type(value).__qualname__}"
    )
