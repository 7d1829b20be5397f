"""What differs between PostgreSQL and MariaDB: positions, lag, read-only, violations.

Read-your-writes needs a *position*: a value read on the primary right after
a COMMIT that a replica can be compared against. PostgreSQL has the WAL LSN
(``X/Y`` in hex, cluster-wide, one number); MariaDB has GTIDs
(``domain-server-sequence``, per replication domain). Each dialect knows how
to read its position on a primary and on a replica, how to spell and compare
them, how to ask a replica for its lag, and how to make a replica connection
refuse writes. Parsing and comparing are pure and tested without a server;
the SQL is exercised by the cluster tests.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sqlalchemy import Connection, Engine

__all__ = [
    "Dialect",
    "MariaDB",
    "PostgreSQL",
    "dialect_of",
    "is_read_only_violation",
    "is_write",
    "lsn",
]

_PG_LSN = re.compile(r"\A[0-9A-F]{1,8}/[0-9A-F]{1,8}\Z")
_MARIADB_GTID = re.compile(r"\A[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}\Z")
_NOT_WRITES = ("SELECT", "SHOW", "EXPLAIN", "DESCRIBE")
_READ_ONLY_SQLSTATE = "25006"  # PostgreSQL read_only_sql_transaction
_READ_ONLY_MYSQL = (1792, 1290)  # in a READ ONLY transaction / --read-only


class Dialect:
    """How one kind of database spells and compares positions."""

    name = ""
    #: One statement, on a replica: the position it has replayed.
    replica_position_sql = ""
    #: One statement, on the replica: its lag in seconds (see :meth:`parse_lag`).
    lag_sql = ""
    #: Whether that lag counts from the last transaction the replica applied,
    #: however long before the one now waiting it was committed (PostgreSQL).
    lag_from_last_applied = False

    def valid(self, text: str) -> bool:
        """Whether ``text`` is a position of this kind, as a token carries it."""
        raise NotImplementedError

    def reached(self, replica_position: object, token_position: str) -> bool:
        """Whether a replica at ``replica_position`` (parsed) has replayed ``token_position``."""
        raise NotImplementedError

    def parse_replica(self, value: object) -> object:
        """The result of :attr:`replica_position_sql`, in the form :meth:`reached` compares."""
        raise NotImplementedError

    def prepare_replica(self, dbapi_connection: Any, record: Any) -> None:
        """Make every transaction on this replica connection read-only."""

    def read_primary(self, connection: Connection) -> str | None:
        """The primary's position after the unit's COMMIT, over the unit's own connection."""
        raise NotImplementedError

    def parse_lag(self, row: dict[str, object] | None) -> float | None:
        """Seconds behind, ``math.inf`` when replication is not running, ``None`` if unknown."""
        raise NotImplementedError


def lsn(text: str) -> int:
    """A PostgreSQL LSN (``16/B374D848``) as one comparable number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class PostgreSQL(Dialect):
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
    # pg_last_xact_replay_timestamp() is the last commit replayed: after an
    # hour without writes, a commit received a millisecond ago reads as an hour.
    lag_from_last_applied = True

    def parse_lag(self, row: dict[str, object] | None) -> float | None:
        value = None if row is None else row.get("lag")
        return None if value is None else max(0.0, float(str(value)))

    def valid(self, text: str) -> bool:
        return _PG_LSN.match(text) is not None

    def parse_replica(self, value: object) -> object:
        return None if value is None else lsn(str(value).upper())

    def reached(self, replica_position: object, token_position: str) -> bool:
        return isinstance(replica_position, int) and replica_position >= lsn(token_position)

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


class MariaDB(Dialect):
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


def dialect_of(engine: Engine) -> Dialect:
    """The dialect of ``engine``; ``ValueError`` for a database without replica support."""
    name = engine.dialect.name
    if name == "postgresql":
        return PostgreSQL()
    if name in ("mysql", "mariadb"):
        return MariaDB()
    raise ValueError(
        f"Replicas: replicas are supported on PostgreSQL and MariaDB, got an engine for {name!r}"
    )


def is_read_only_violation(error: BaseException) -> bool:
    """Whether a driver error is a write refused by a read-only transaction or server."""
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if sqlstate == _READ_ONLY_SQLSTATE:
        return True
    args: tuple[object, ...] = tuple(getattr(error, "args", ()))
    return bool(args) and args[0] in _READ_ONLY_MYSQL


def is_write(statement: str) -> bool:
    """Whether a statement sent to a primary counts as a write (anything but a read)."""
    return not statement.lstrip(" \t\r\n(").upper().startswith(_NOT_WRITES)
