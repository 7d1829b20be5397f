"""What every application served by a live test or a benchmark sets up the same way.

A served application is imported by each server worker, with the database
in ``DATABASE_URL``; ``DATABASE_POOLING=transaction`` says the URL points at
a transaction-pooling proxy (PgBouncer with ``pool_mode = transaction``).
Each application keeps its own declarative ``Base``: the tests create and
drop one application's tables at a time.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from wsgi_sqla import transaction_pooled

__all__ = ["served_database"]


def served_database(**engine_options: Any) -> tuple[Engine, scoped_session[Session]]:
    """The engine on ``DATABASE_URL`` (made transaction-pooled if asked) and its scoped session.

    ``engine_options`` go to :func:`~sqlalchemy.create_engine`. ``KeyError``
    when ``DATABASE_URL`` is not set; ``ValueError`` for a ``DATABASE_POOLING``
    other than ``transaction``.
    """
    engine = create_engine(os.environ["DATABASE_URL"], **engine_options)
    pooling = os.environ.get("DATABASE_POOLING", "")
    if pooling == "transaction":
        transaction_pooled(engine)
    elif pooling:
        raise ValueError(f"DATABASE_POOLING: expected 'transaction' or nothing, got {pooling!r}")
    return engine, scoped_session(sessionmaker(bind=engine))
