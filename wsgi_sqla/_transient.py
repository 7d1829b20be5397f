"""Which database errors are transient: the transaction may succeed if run again.

Under SERIALIZABLE or REPEATABLE READ isolation, and whenever rows are
locked, a database may abort a perfectly correct transaction because a
concurrent one got in its way: PostgreSQL's serialization failures and
deadlocks, MariaDB's deadlocks and lock-wait timeouts. :func:`is_transient_error`
recognises those by the driver's error code, and nothing else: a lost
connection is not transient, because after a connection drops during COMMIT
nobody knows whether the transaction committed, so running it again could
apply it twice.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = ["MYSQL_TRANSIENT_ERRORS", "POSTGRESQL_TRANSIENT_SQLSTATES", "is_transient_error"]

#: PostgreSQL SQLSTATEs after which running the transaction again can succeed:
#: serialization_failure, deadlock_detected, lock_not_available (``NOWAIT``
#: or ``lock_timeout``).
POSTGRESQL_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})

#: MariaDB / MySQL error numbers after which running the transaction again
#: can succeed: ER_LOCK_WAIT_TIMEOUT (1205) and ER_LOCK_DEADLOCK (1213).
MYSQL_TRANSIENT_ERRORS = frozenset({1205, 1213})


def is_transient_error(exc: BaseException) -> bool:
    """``True`` when ``exc`` says the database aborted a transaction that may succeed if re-run.

    Looks at ``exc`` and its explicit causes (``raise ... from ...``) for a
    :class:`sqlalchemy.exc.DBAPIError` whose driver error (``.orig``)
    carries one of :data:`POSTGRESQL_TRANSIENT_SQLSTATES` (psycopg's
    ``sqlstate``, psycopg2's ``pgcode``) or one of
    :data:`MYSQL_TRANSIENT_ERRORS` (the error number drivers put first in
    ``args``, or in ``errno``). Everything else, lost connections included,
    is not transient: when a connection drops during COMMIT nobody knows
    whether the transaction committed, so running it again could apply it
    twice.
    """
    seen: BaseException | None = exc
    for _ in range(16):  # a bound, in case of a cycle of causes
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and _driver_error_is_transient(seen.orig):
            return True
        seen = seen.__cause__
    return False


def _driver_error_is_transient(error: object) -> bool:
    # Checked independently: PyMySQL also carries a SQLSTATE, and MariaDB's
    # lock-wait timeout has the generic one (HY000).
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate in POSTGRESQL_TRANSIENT_SQLSTATES:
        return True
    number = getattr(error, "errno", None)
    if not isinstance(number, int):
        args = getattr(error, "args", ())
        number = args[0] if args else None
    return isinstance(number, int) and number in MYSQL_TRANSIENT_ERRORS
