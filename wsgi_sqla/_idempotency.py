"""Idempotency keys: the configuration, the table, and the claim on a key.

A request with an unsafe method and an ``Idempotency-Key`` header runs the
application at most once per (client scope, key). The table holds one row
per (scope, key), in two states:

* a **claim**: ``status`` is ``NULL``. It is inserted and committed in a
  short transaction of its own, on a connection of its own, before the
  application runs, with a *lease* (``lease_until``). While the lease runs,
  a duplicate of the request is answered ``409 Conflict`` at once: it never
  waits for the first request's transaction (only, at most, for the moment
  between the record's ``UPDATE`` and its ``COMMIT``, which follow each
  other once the response is buffered), and never runs the application.
  A worker killed mid-request leaves its claim behind; once the lease is
  over, the next attempt with that key takes the claim over.
* a **record**: ``status``, ``headers`` and ``body`` are set. The claim
  becomes the record by an ``UPDATE`` made in the request's own unit of work,
  on the same connection as the application's writes, so the record is
  committed if and only if the work is. The ``UPDATE`` names the claim's
  ``token``: a request whose claim was taken over (it outlived its lease)
  updates nothing, is rolled back and answered ``409``, so two runs never
  both commit.

A request that does not commit (status 400 or above, an exception, a veto, a
failed commit) records nothing; its claim is deleted when the response is
closed, and a retry with the same key runs the application again, which is
safe because nothing happened. Only outcomes that changed something are
replayed.

Nothing here is session-level: no advisory lock, no ``SET``; each statement
runs in an ordinary transaction, so the keys work behind PgBouncer in
transaction pooling mode. Times are the application servers' UTC clocks:
keep them in sync (NTP) when several machines serve one database.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import scoped_session

from ._owners import check_seconds

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "Claim",
    "IdempotencyKeys",
    "StoredResponse",
    "default_scope",
    "expire_idempotency_keys",
    "stored_response",
]

#: Longest key accepted (the draft leaves it open; Stripe's are at most 255).
KEY_LENGTH = 255
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MiB = 1 << 20


def default_scope(environ: WSGIEnvironment) -> str:
    """The client's scope: its ``Authorization`` header (stored as a digest), or ``""``.

    Requests without credentials share the scope ``""``: their keys are
    then global, which is only safe when the keys are unguessable (random
    UUIDs). Pass ``scope=`` to scope by a cookie session's user id instead.
    """
    return str(environ.get("HTTP_AUTHORIZATION", ""))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _limit(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"IdempotencyKeys: {name} must be an int (bytes), got {value!r}")
    if value < 0:
        raise ValueError(f"IdempotencyKeys: {name} must be >= 0 bytes, got {value!r}")
    return value


def _positive_seconds(value: object, name: str) -> datetime.timedelta:
    seconds = check_seconds(value, name, "IdempotencyKeys")
    if not 0 < seconds < float("inf"):
        raise ValueError(
            f"IdempotencyKeys: {name} must be a finite number of seconds > 0, got {value!r}"
        )
    return datetime.timedelta(seconds=seconds)


class IdempotencyKeys:
    """Exactly-once writes for requests that carry an ``Idempotency-Key``::

        keys = IdempotencyKeys()                     # IdempotencyKeys(required=True) demands one
        keys.table.create(engine, checkfirst=True)   # or add keys.metadata to Alembic's
        app.wsgi_app = SessionMiddleware(app.wsgi_app, db, idempotency=keys)

    A request whose method is in ``methods`` and which carries the header
    runs the application at most once per (client scope, key); a repeat
    after its commit gets the stored response with ``Idempotent-Replayed:
    true``. See :doc:`/exactly-once` for the whole contract.

    :param required: answer ``400`` to a request of ``methods`` without the
        header (default: such a request runs as any other).
    :param methods: the methods keys apply to (default POST and PATCH);
        safe methods (GET, HEAD, OPTIONS, TRACE) are refused, they ignore
        the header.
    :param ttl: seconds a record is kept (default 24 hours); after that the
        key counts as new, and :func:`expire_idempotency_keys` deletes it.
    :param lease: seconds a claim blocks its key while its request runs
        (default 60). A key whose request died (``kill -9``) is free again
        after it. Keep it above your longest request (the server's worker
        timeout): a request that outlives its lease can be taken over, and
        then it is rolled back and answered ``409``.
    :param body_limit: largest request body, in bytes, fingerprinted
        (default 1 MiB); a keyed request with a larger one gets ``413``.
    :param response_limit: largest response body, in bytes, stored for
        replay (default 1 MiB). A larger response is sent and committed as
        usual, and its status and headers are recorded without the body;
        a repeat gets ``409`` saying the request completed, never a second
        run.
    :param scope: ``scope(environ) -> str``, the client a key belongs to
        (default :func:`default_scope`, the ``Authorization`` header); it
        is stored as a SHA-256 digest.
    :param table_name: the table's name (default ``wsgi_sqla_idempotency_keys``).
    :param session: the scoped session whose database holds the table;
        default the middleware's first session.
    :raises TypeError: for an argument of the wrong type.
    :raises ValueError: for a negative limit, a time that is not positive,
        no method or a safe one.

    ``keys.table`` is a :class:`sqlalchemy.Table` on a
    :class:`~sqlalchemy.MetaData` of its own (``keys.metadata``): add it to
    Alembic's ``target_metadata``, or ``keys.table.create(engine,
    checkfirst=True)``.
    """

    __slots__ = (
        "body_limit",
        "lease",
        "metadata",
        "methods",
        "required",
        "response_limit",
        "scope",
        "session",
        "table",
        "ttl",
    )

    def __init__(
        self,
        *,
        required: bool = False,
        methods: Iterable[str] = ("POST", "PATCH"),
        ttl: float = 24 * 3600,
        lease: float = 60,
        body_limit: int = _MiB,
        response_limit: int = _MiB,
        scope: Callable[[WSGIEnvironment], str] = default_scope,
        table_name: str = "wsgi_sqla_idempotency_keys",
        session: scoped_session[Any] | None = None,
    ) -> None:
        if not isinstance(required, bool):
            raise TypeError(f"IdempotencyKeys: required must be a bool, got {required!r}")
        self.required: bool = required
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
            raise TypeError(
                f"IdempotencyKeys: methods must be an iterable of method names, got {methods!r}"
            )
        self.methods: frozenset[str] = frozenset(m.upper() for m in methods)
        if not self.methods or self.methods & _SAFE:
            raise ValueError(
                "IdempotencyKeys: methods must name at least one unsafe method and no safe "
                f"one (safe methods ignore the header), got {sorted(self.methods)}"
            )
        self.ttl: datetime.timedelta = _positive_seconds(ttl, "ttl")
        self.lease: datetime.timedelta = _positive_seconds(lease, "lease")
        self.body_limit: int = _limit(body_limit, "body_limit")
        self.response_limit: int = _limit(response_limit, "response_limit")
        if not callable(scope):
            raise TypeError(
                f"IdempotencyKeys: scope must be a callable (environ) -> str, got {scope!r}"
            )
        self.scope: Callable[[WSGIEnvironment], str] = scope
        if not isinstance(table_name, str) or not table_name:
            raise TypeError(
                f"IdempotencyKeys: table_name must be a non-empty str, got {table_name!r}"
            )
        if session is not None and not isinstance(session, scoped_session):
            raise TypeError(f"IdempotencyKeys: session must be a scoped_session, got {session!r}")
        self.session: scoped_session[Any] | None = session
        self.metadata: MetaData = MetaData()
        self.table: Table = Table(
            table_name,
            self.metadata,
            Column("scope", String(64), nullable=False),
            Column("key", String(KEY_LENGTH), nullable=False),
            Column("fingerprint", String(64), nullable=False),
            Column("token", String(32), nullable=False),
            Column("lease_until", DateTime(), nullable=True),
            Column("expires_at", DateTime(), nullable=False, index=True),
            Column("status", String(255), nullable=True),
            Column("headers", Text(), nullable=True),
            Column(
                "body",
                LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
                nullable=True,
            ),
            PrimaryKeyConstraint("scope", "key", name=f"{table_name}_pkey"),
        )

    def __repr__(self) -> str:
        return (
            f"IdempotencyKeys(required={self.required}, methods={sorted(self.methods)}, "
            f"ttl={self.ttl.total_seconds()}, lease={self.lease.total_seconds()}, "
            f"table_name={self.table.name!r})"
        )

    def applies(self, environ: WSGIEnvironment) -> bool:
        """Whether a request is handled as a keyed one: its method, and a key or ``required``."""
        return environ.get("REQUEST_METHOD") in self.methods and (
            self.required or "HTTP_IDEMPOTENCY_KEY" in environ
        )

    def store(self, sessions: tuple[scoped_session[Any], ...], owner: str) -> KeyStore:
        """The store of the middleware over ``sessions``: the session and engine of the table.

        :raises ValueError: when ``session`` is not one of ``sessions``.
        :raises TypeError: when that session is not bound to one engine.
        """
        scoped = sessions[0] if self.session is None else self.session
        if scoped not in sessions:
            raise ValueError(
                f"{owner}: IdempotencyKeys(session=...) must be one of the middleware's sessions"
            )
        bind = getattr(scoped.session_factory, "kw", {}).get("bind")
        if not isinstance(bind, Engine):
            raise TypeError(
                f"{owner}: the idempotency keys' session must be bound to one engine "
                "(sessionmaker(bind=engine))"
            )
        return KeyStore(self, scoped, bind)


class StoredResponse(NamedTuple):
    """A committed request's response, as recorded: ``body`` is ``None`` above the limit."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes | None


class Claim(NamedTuple):
    """What claiming a key found: ``token`` when this request may run, else the row seen."""

    token: str | None
    fingerprint: str | None = None
    response: StoredResponse | None = None


def _response(row: Any) -> StoredResponse | None:
    if row.status is None:
        return None
    headers = [(str(name), str(value)) for name, value in json.loads(row.headers or "[]")]
    return StoredResponse(row.status, headers, None if row.body is None else bytes(row.body))


def _insert_new(connection: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert the claim unless the key has a row already.

    The dialect's "insert or do nothing", so that a duplicate neither aborts
    the transaction (PostgreSQL) nor needs a savepoint. Whether the row is
    this claim is read back by its token: an INSERT's row count is not
    reliable across drivers.
    """
    name = connection.dialect.name
    statement: Any
    if name == "postgresql":
        statement = postgresql.insert(table).values(values).on_conflict_do_nothing()
    elif name == "sqlite":
        statement = sqlite.insert(table).values(values).on_conflict_do_nothing()
    elif name in ("mysql", "mariadb"):
        statement = insert(table).values(values).prefix_with("IGNORE")
    else:
        try:
            with connection.begin_nested():
                connection.execute(insert(table).values(values))
        except IntegrityError:
            pass
        return
    connection.execute(statement)


class KeyStore:
    """The keys of one middleware: its table, the session that writes records, its engine."""

    __slots__ = ("engine", "keys", "scoped", "table")

    def __init__(self, keys: IdempotencyKeys, scoped: scoped_session[Any], engine: Engine) -> None:
        self.keys: IdempotencyKeys = keys
        self.table: Table = keys.table
        #: the session whose unit writes the records
        self.scoped: scoped_session[Any] = scoped
        #: its engine, for the claims' own transactions
        self.engine: Engine = engine

    def claim(self, scope: str, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` for one run, in a committed transaction of its own.

        Returns a :class:`Claim` with a ``token`` when the request may run
        (a new key, an expired record, a claim whose lease is over), or the
        row found: its fingerprint and, once committed, its response.
        """
        table, keys = self.table, self.keys
        scoped = _digest(scope)
        now = _utcnow()
        token = secrets.token_hex(16)
        fresh = {
            "fingerprint": fingerprint,
            "token": token,
            "lease_until": now + keys.lease,
            "expires_at": now + keys.ttl,
            "status": None,
            "headers": None,
            "body": None,
        }
        where = and_(table.c.scope == scoped, table.c.key == key)
        with self.engine.connect() as connection, connection.begin():
            _insert_new(connection, table, {"scope": scoped, "key": key, **fresh})
            row = connection.execute(
                select(
                    table.c.fingerprint,
                    table.c.token,
                    table.c.lease_until,
                    table.c.expires_at,
                    table.c.status,
                    table.c.headers,
                    table.c.body,
                ).where(where)
            ).first()
            if row is None:
                # Released between the two statements: the other request did not commit.
                return Claim(None, fingerprint)
            if row.token == token:
                return Claim(token)
            over = row.expires_at <= now or (row.status is None and row.lease_until <= now)
            if over:
                taken = connection.execute(
                    update(table).where(where, table.c.token == row.token).values(**fresh)
                )
                if taken.rowcount == 1:
                    return Claim(token)
                return Claim(None, fingerprint)  # another request took it over first
            return Claim(None, row.fingerprint, _response(row))

    def record(self, scope: str, key: str, token: str, response: StoredResponse) -> bool:
        """Turn the claim into the record, in the running unit's session (not committed here).

        ``False`` when the claim is not this request's any more (it outlived
        its lease and was taken over): the unit must then roll back.
        """
        table = self.table
        done = self.scoped.execute(
            update(table)
            .where(table.c.scope == _digest(scope), table.c.key == key, table.c.token == token)
            .values(
                status=response.status,
                headers=json.dumps(response.headers),
                body=response.body,
                lease_until=None,
                expires_at=_utcnow() + self.keys.ttl,
            )
        )
        return bool(getattr(done, "rowcount", 0))

    def release(self, scope: str, key: str, token: str) -> None:
        """Delete this request's claim if it did not become a record (nothing committed)."""
        table = self.table
        with self.engine.begin() as connection:
            connection.execute(
                delete(table).where(
                    table.c.scope == _digest(scope),
                    table.c.key == key,
                    table.c.token == token,
                    table.c.status.is_(None),
                )
            )


def stored_response(
    keys: IdempotencyKeys,
    bind: Engine | Connection,
    scope: str,
    key: str,
    token: str | None = None,
) -> StoredResponse | None:
    """The response recorded for ``key`` of client ``scope``, if its request committed.

    For resolving a ``COMMIT`` whose outcome is unknown: ask on a fresh
    connection (``bind``, an engine or a connection of the table's
    database). A record exists only if the request's unit committed, since
    it is written in that unit's transaction; a claim (request running,
    or not committed) or no row gives ``None``. ``scope`` is what
    ``keys.scope(environ)`` returned for the request; ``token``, its claim's
    token, to find only the record of that very request.
    """
    table = keys.table
    query = select(table.c.status, table.c.headers, table.c.body).where(
        table.c.scope == _digest(scope), table.c.key == key, table.c.status.is_not(None)
    )
    if token is not None:
        query = query.where(table.c.token == token)
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            row = connection.execute(query).first()
    else:
        row = bind.execute(query).first()
    return None if row is None else _response(row)


def expire_idempotency_keys(
    keys: IdempotencyKeys, bind: Engine | Connection, *, now: datetime.datetime | None = None
) -> int:
    """Delete the expired keys of ``keys.table``; how many were deleted.

    A record is expired once its ``ttl`` is over; a claim once its ``ttl``
    and its lease are over (a running request keeps its claim). An expired
    key counts as new even before it is deleted, so this only keeps the
    table small: run it from cron or Celery beat (see :doc:`/exactly-once`).
    Given an engine, it commits in a transaction of its own; given a
    connection, it runs in the connection's transaction. ``now`` (naive
    UTC) is for tests.
    """
    table = keys.table
    moment = now or _utcnow()
    statement = delete(table).where(
        table.c.expires_at <= moment,
        or_(table.c.lease_until.is_(None), table.c.lease_until <= moment),
    )
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            return int(connection.execute(statement).rowcount or 0)
    return int(bind.execute(statement).rowcount or 0)
