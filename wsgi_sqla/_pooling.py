"""Engines behind a transaction-pooling proxy (PgBouncer ``pool_mode = transaction``).

A transaction pooler hands each *transaction* of a client connection to
whichever PostgreSQL connection ("server connection") is free, so anything a
transaction leaves on its server connection is seen by the next client's
transactions there, and anything a client expects to find on "its"
connection may be gone. psycopg 3 prepares a statement on the server after
it ran ``prepare_threshold`` (5) times on a client connection and later
executes it by name (``_pg3_0``, ``_pg3_1``, ...). Behind a pooler that name
lands on a server connection where it does not exist
(``InvalidSqlStatementName``), exists already (``DuplicatePreparedStatement``),
or, worst, names another client's different statement, which then runs with
this client's parameters. PgBouncer before 1.21 (Debian bookworm ships 1.18)
cannot track protocol-level prepared statements at all, and later versions
only with ``max_prepared_statements`` > 0.

:func:`transaction_pooled` turns the driver's prepared statements off for
an engine. Everything wsgi_sqla itself sends is transaction-scoped (it issues
no session ``SET``, advisory lock or ``LISTEN``; isolation levels given to
SQLAlchemy's psycopg dialect travel in each ``BEGIN``), so nothing else is
needed from the package. The application's own SQL must follow the same
rules; docs/deploying/pgbouncer.rst lists them.

PgBouncer does not announce itself to clients, so the dangerous combination
cannot be detected up front. What can be detected cheaply is its symptom:
when a psycopg 3 statement fails because a ``_pg3_*`` prepared statement is
missing or already exists, wsgi_sqla warns with
:class:`TransactionPoolerWarning` and adds a note to the exception naming
the cure. The listener is on the engines the package was given (those of
the sessions its middleware, ``transaction()``, Celery base and ``isolated()``
own), never on every engine of the process, and it runs only when a
statement fails, so it costs nothing per request.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext

__all__ = ["TransactionPoolerWarning", "explain_pooler_failures", "transaction_pooled"]

# Drivers whose prepared statements transaction_pooled() knows how to switch off
# (psycopg) or that prepare nothing on the server unless asked to (psycopg2).
_PREPARES_BY_THRESHOLD = "psycopg"
_NEVER_PREPARES = frozenset({"psycopg2", "psycopg2cffi"})

# invalid_sql_statement_name, duplicate_prepared_statement
_PREPARED_STATEMENT_SQLSTATES = frozenset({"26000", "42P05"})


class TransactionPoolerWarning(UserWarning):
    """A statement failed in a way that only a transaction pooler in front of PostgreSQL causes.

    Raised as a warning (and added as a note to the exception) when psycopg 3
    executes one of its server-side prepared statements (``_pg3_*``) on a
    connection where it is missing or already exists. Behind PgBouncer in
    transaction mode this means the engine was not made with
    :func:`transaction_pooled` (or ``prepare_threshold=None``), and that
    other statements may already have run with the wrong SQL.
    """


_HINT = (
    "wsgi_sqla: psycopg's server-side prepared statement {name!r} was missing or already "
    "existed on this PostgreSQL connection. That happens when a transaction-pooling proxy "
    "(PgBouncer pool_mode=transaction) hands the statements of one client connection to "
    "several server connections, and it can also run another client's statement with these "
    "parameters. Make the engine with wsgi_sqla.transaction_pooled(engine) "
    "(or connect_args={{'prepare_threshold': None}})."
)


def transaction_pooled(engine: Engine) -> Engine:
    """Make ``engine`` safe behind a transaction-pooling PgBouncer; return it.

    Guarantees that no connection the engine opens from now on prepares
    statements on the server: with psycopg 3 every new connection gets
    ``prepare_threshold=None`` (whatever ``connect_args`` said), and the
    pool is disposed, so no later checkout gets a connection made before
    the call. psycopg2 never prepares statements by itself, so its
    engines are returned unchanged. Call it right after ``create_engine()``,
    before the engine serves requests. Calling it again changes nothing more.

    The engine keeps its pool (a ``QueuePool`` by default): each worker's
    pool holds cheap client connections to PgBouncer, and PgBouncer's
    ``default_pool_size`` bounds the PostgreSQL connections. Isolation
    levels set through SQLAlchemy (``isolation_level=`` on the engine or
    per connection) stay per transaction with these drivers.

    Raises :class:`TypeError` for anything but an ``Engine`` and
    :class:`ValueError` for a database or driver this is not for: another
    database than PostgreSQL, or a PostgreSQL driver whose prepared
    statements it cannot switch off (such as asyncpg, which needs its own
    statement-cache settings).
    """
    if not isinstance(engine, Engine):
        raise TypeError(
            "transaction_pooled(): needs a sqlalchemy.Engine, got "
            f"{type(engine).__module__}.{type(engine).__qualname__}"
        )
    dialect = engine.dialect
    if dialect.name != "postgresql":
        raise ValueError(
            "transaction_pooled(): is for PostgreSQL behind a transaction-pooling PgBouncer, "
            f"got a {dialect.name} engine ({engine.url.render_as_string()})"
        )
    driver = dialect.driver
    if driver in _NEVER_PREPARES:
        return engine
    if driver != _PREPARES_BY_THRESHOLD:
        raise ValueError(
            f"transaction_pooled(): cannot switch off the {driver} driver's prepared "
            "statements; use postgresql+psycopg:// (psycopg 3)"
        )
    if not event.contains(engine, "do_connect", _no_server_side_prepare):
        event.listen(engine, "do_connect", _no_server_side_prepare)
        # Connections opened before this call would still prepare statements.
        engine.dispose()
    return engine


def _no_server_side_prepare(
    _dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]
) -> None:
    cparams["prepare_threshold"] = None


def _explain_pooler_failure(context: ExceptionContext) -> None:
    original = context.original_exception
    if getattr(original, "sqlstate", None) not in _PREPARED_STATEMENT_SQLSTATES:
        return
    text = str(original)
    if '"_pg3_' not in text:
        return  # a statement the application prepared with SQL PREPARE, not psycopg
    name = text.split('"', 2)[1]
    hint = _HINT.format(name=name)
    warnings.warn(hint, TransactionPoolerWarning, stacklevel=2)
    error = context.sqlalchemy_exception
    if error is not None and sys.version_info >= (3, 11):  # add_note() is new in 3.11
        error.add_note(hint)


def explain_pooler_failures(engine: Engine) -> None:
    """Warn on ``engine``'s failures that only a transaction pooler causes; idempotent.

    Called for every engine the package was given (through the sessions of
    a middleware, ``transaction()``, the Celery base or ``isolated()``):
    other engines in the process get no listener.
    """
    if not event.contains(engine, "handle_error", _explain_pooler_failure):
        event.listen(engine, "handle_error", _explain_pooler_failure)
