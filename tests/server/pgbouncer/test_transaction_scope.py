"""Nothing of one client's transaction may stay on a server connection PgBouncer shares.

First what goes over the wire, captured by a relay between the driver and
the database (so implicit statements no SQLAlchemy event sees are caught):
a request run by the middleware sends only its own SQL and the transaction
control, on PostgreSQL and on MariaDB; an isolation level given to
SQLAlchemy travels in psycopg's ``BEGIN`` on PostgreSQL, while the MySQL
dialect sets it as session state. Then, through a PgBouncer whose pool has
room for exactly the connections a test needs (so the next client gets the
server connection the previous one used, checked by its backend pid): a
SERIALIZABLE request leaves nothing behind, while the hazards the
documentation warns about are real, each with its transaction-scoped
alternative: a session ``SET`` and a session advisory lock leak to the next
client; ``SET LOCAL`` and ``pg_advisory_xact_lock`` do not.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from support import database_url, serve

from harness.pgbouncer import MakeBouncer, PgBouncer
from harness.proxy import Sniffer
from wsgi_sqla import SessionMiddleware, transaction

# -- what the drivers send -----------------------------------------------------------


SNIFFED_PROTOCOL = {"postgresql": "postgresql", "mariadb": "mysql"}


@pytest.fixture(params=list(SNIFFED_PROTOCOL))
def sniffed(request: pytest.FixtureRequest) -> Iterator[tuple[str, Sniffer]]:
    """(URL through a recording relay, the relay) for the database of the test."""
    url, sniffer = sniff(request.param)
    try:
        yield url, sniffer
    finally:
        sniffer.close()


def sniff(db: str) -> tuple[str, Sniffer]:
    """A :class:`Sniffer` in front of database ``db`` and the URL that goes through it."""
    url = make_url(database_url(db, Path()))
    sniffer = Sniffer(url.host or "127.0.0.1", url.port or 0, SNIFFED_PROTOCOL[db])
    url = url.set(port=sniffer.port)
    if db == "postgresql":
        url = url.update_query_dict({"sslmode": "disable"})  # plain text, so it can be read
    return url.render_as_string(hide_password=False), sniffer


def warmed_up(url: str, **kw: Any) -> Engine:
    """An engine whose first connection (and the dialect's start-up queries) is done."""
    engine = create_engine(url, **kw)
    with engine.connect():
        pass
    return engine


def statement_app(db: scoped_session[Session]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        db.execute(text("SELECT 1"))
        status = "200 OK" if environ["PATH_INFO"] == "/ok" else "500 Internal Server Error"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"done"]

    return SessionMiddleware(app, db)


# MySQL starts a transaction implicitly; PyMySQL's pool reset sends a ROLLBACK even
# after a COMMIT (psycopg's is a no-op on an idle connection).
REQUEST_STATEMENTS = {
    ("postgresql", "/ok"): ["BEGIN", "SELECT 1", "COMMIT"],
    ("postgresql", "/fail"): ["BEGIN", "SELECT 1", "ROLLBACK"],
    ("mariadb", "/ok"): ["SELECT 1", "COMMIT", "ROLLBACK"],
    ("mariadb", "/fail"): ["SELECT 1", "ROLLBACK", "ROLLBACK"],
}


@pytest.mark.parametrize("path", ["/ok", "/fail"])
def test_a_request_sends_only_its_own_sql_and_transaction_control(
    sniffed: tuple[str, Sniffer], path: str
) -> None:
    url, sniffer = sniffed
    engine = warmed_up(url)
    db = scoped_session(sessionmaker(bind=engine))
    try:
        sniffer.clear()
        serve(statement_app(db), path=path)
        assert sniffer.statements() == REQUEST_STATEMENTS[engine.dialect.name, path]
    finally:
        engine.dispose()


def test_a_transaction_block_sends_only_its_own_sql_and_transaction_control(
    sniffed: tuple[str, Sniffer],
) -> None:
    url, sniffer = sniffed
    engine = warmed_up(url)
    db = scoped_session(sessionmaker(bind=engine))
    try:
        sniffer.clear()
        with transaction(db):
            db.execute(text("SELECT 1"))
        assert sniffer.statements() == REQUEST_STATEMENTS[engine.dialect.name, "/ok"]
    finally:
        engine.dispose()


SERIALIZABLE_SENT = {
    # psycopg applies the level to each transaction it begins: nothing stays behind.
    ("postgresql", "engine"): ["BEGIN ISOLATION LEVEL SERIALIZABLE", "SELECT 1", "COMMIT"],
    ("postgresql", "connection"): ["BEGIN ISOLATION LEVEL SERIALIZABLE", "SELECT 1", "COMMIT"],
    # The MySQL dialect sets the level on the session, and resets it on the way back to
    # the pool with a second session SET: state a multiplexing proxy would share.
    ("mariadb", "engine"): ["SELECT 1", "COMMIT", "ROLLBACK"],
    ("mariadb", "connection"): [
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "COMMIT",
        "SELECT 1",
        "COMMIT",
        "ROLLBACK",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "COMMIT",
    ],
}


@pytest.mark.parametrize("where", ["engine", "connection"])
def test_what_the_dialect_sends_for_a_serializable_transaction(
    sniffed: tuple[str, Sniffer], where: str
) -> None:
    url, sniffer = sniffed
    engine = warmed_up(url, **({"isolation_level": "SERIALIZABLE"} if where == "engine" else {}))
    try:
        sniffer.clear()
        with engine.connect() as connection:
            if where == "connection":
                connection.execution_options(isolation_level="SERIALIZABLE")
            connection.execute(text("SELECT 1"))
            connection.commit()
        assert sniffer.statements() == SERIALIZABLE_SENT[engine.dialect.name, where]
    finally:
        engine.dispose()


def test_the_mysql_engine_level_isolation_is_a_session_set_sent_at_connect() -> None:
    url, sniffer = sniff("mariadb")
    engine = create_engine(url, isolation_level="SERIALIZABLE")
    try:
        with engine.connect():
            pass
        assert "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE" in sniffer.statements()
    finally:
        engine.dispose()
        sniffer.close()


# -- through PgBouncer: what stays on a shared server connection ----------------------


def through(bouncer: PgBouncer, **kw: Any) -> Engine:
    return create_engine(bouncer.url(), **kw)


def one(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.begin() as connection:
        return connection.execute(text(sql), params).one()


ISOLATION_AND_PID = "SELECT current_setting('transaction_isolation'), pg_backend_pid()"


def serializable_app(db: scoped_session[Session], per_connection: bool) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if per_connection:
            db.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        level, pid = db.execute(text(ISOLATION_AND_PID)).one()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{level} {pid}".encode()]

    return SessionMiddleware(app, db)


@pytest.mark.parametrize("per_connection", [True, False], ids=["per-connection", "engine"])
def test_a_serializable_request_leaves_the_next_client_at_the_default_level(
    make_pgbouncer: MakeBouncer, per_connection: bool
) -> None:
    bouncer = make_pgbouncer(pool_size=1)
    engine = through(bouncer, **({} if per_connection else {"isolation_level": "SERIALIZABLE"}))
    other = through(bouncer)
    try:
        db = scoped_session(sessionmaker(bind=engine))
        reply = serve(serializable_app(db, per_connection))
        level, pid = reply.body.decode().split()
        assert (reply.status, level) == ("200 OK", "serializable")
        assert one(other, ISOLATION_AND_PID) == ("read committed", int(pid))
        # The same holds for the same client's pooled connection after a per-connection level.
        assert one(engine, ISOLATION_AND_PID)[0] == ("read committed" if per_connection else level)
    finally:
        engine.dispose()
        other.dispose()


@pytest.mark.parametrize(
    ("statement", "next_client_sees"),
    [
        pytest.param("SET", "tenant-A", id="session-SET-leaks"),
        pytest.param("SET LOCAL", "", id="SET-LOCAL-stays-in-its-transaction"),
    ],
)
def test_a_set_reaches_the_next_client_unless_it_is_local(
    make_pgbouncer: MakeBouncer, statement: str, next_client_sees: str
) -> None:
    bouncer = make_pgbouncer(pool_size=1)
    first, second = through(bouncer), through(bouncer)
    try:
        with first.begin() as connection:
            connection.execute(text(f"{statement} myapp.tenant = 'tenant-A'"))
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        seen = one(second, "SELECT current_setting('myapp.tenant', true), pg_backend_pid()")
        assert seen == (next_client_sees, pid)
    finally:
        first.dispose()
        second.dispose()


def test_a_session_advisory_lock_excludes_no_one_through_pgbouncer(
    make_pgbouncer: MakeBouncer,
) -> None:
    """Control: the lock stays on the server connection, which then serves another client."""
    bouncer = make_pgbouncer(pool_size=1)  # stopping it releases the leaked lock
    owner, rival = through(bouncer), through(bouncer)
    key = uuid.uuid4().int % (1 << 62)
    try:
        one(owner, "SELECT pg_advisory_lock(:k)", k=key)
        # The rival lands on the same backend, where the lock is re-entrant: "acquired".
        assert one(rival, "SELECT pg_try_advisory_lock(:k), pg_backend_pid()", k=key)[0] is True
    finally:
        owner.dispose()
        rival.dispose()


def test_a_transaction_advisory_lock_excludes_the_other_client_until_commit(
    make_pgbouncer: MakeBouncer,
) -> None:
    bouncer = make_pgbouncer(pool_size=2)
    owner, rival = through(bouncer), through(bouncer)
    key = uuid.uuid4().int % (1 << 62)
    try:
        with owner.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            taken = one(rival, "SELECT pg_try_advisory_xact_lock(:k)", k=key)[0]
            assert taken is False
        assert one(rival, "SELECT pg_try_advisory_xact_lock(:k)", k=key)[0] is True
    finally:
        owner.dispose()
        rival.dispose()
