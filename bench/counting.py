"""SQL round trips per request, counted with SQLAlchemy events.

What a request costs the database is not its time in Python but the
messages it exchanges with the server. These are counted where SQLAlchemy
sees them, so the counts are exact and the same on every run:

* ``statements``: cursor executions (``before_cursor_execute``);
* ``begin``, ``commit``, ``rollback``: the connection-level transaction
  events SQLAlchemy emits (a driver may send BEGIN lazily with the first
  statement, but there is one per transaction either way);
* ``checkouts``: connections taken from the pool;
* ``resets``: connections the pool rolled back on return because their
  transaction had not been ended by then (a real ROLLBACK on drivers that
  send one unconditionally, such as PyMySQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["RoundTrips", "counting"]


@dataclass
class RoundTrips:
    """Counts of one kind of round trip each, over some number of requests."""

    statements: int = 0
    begin: int = 0
    commit: int = 0
    rollback: int = 0
    checkouts: int = 0
    resets: int = 0

    def per_request(self, requests: int) -> dict[str, float]:
        """Each count divided by ``requests``."""
        return {f.name: getattr(self, f.name) / requests for f in fields(self)}


@contextmanager
def counting(engine: Engine) -> Iterator[RoundTrips]:
    """Count the round trips on ``engine`` while the block runs."""
    counts = RoundTrips()

    def statement(*_args: Any) -> None:
        counts.statements += 1

    def begin(_conn: Any) -> None:
        counts.begin += 1

    def commit(_conn: Any) -> None:
        counts.commit += 1

    def rollback(_conn: Any) -> None:
        counts.rollback += 1

    def checkout(*_args: Any) -> None:
        counts.checkouts += 1

    def reset(_dbapi: Any, _record: Any, state: Any) -> None:
        if not state.transaction_was_reset:
            counts.resets += 1

    listeners: list[tuple[Any, str, Any]] = [
        (engine, "before_cursor_execute", statement),
        (engine, "begin", begin),
        (engine, "commit", commit),
        (engine, "rollback", rollback),
        (engine.pool, "checkout", checkout),
        (engine.pool, "reset", reset),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield counts
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)
