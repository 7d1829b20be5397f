"""pytest plugin: each test in an outer transaction that is rolled back at its end.

Installed with the package and registered through the ``pytest11`` entry
point, so there is nothing to add to ``pytest_plugins``. It provides two
fixtures:

``wsgi_sqla_sessions``
    Configuration: the scoped session(s) to isolate. The plugin cannot guess
    them, so the default raises an error telling you to override it; do that
    once in your ``conftest.py``::

        @pytest.fixture
        def wsgi_sqla_sessions():
            return myapp.db          # or a tuple (db, other_db)

    Each session's ``sessionmaker`` must be bound to its engine
    (``sessionmaker(bind=engine)``); that engine is the one isolated. To test
    against another database, point the engine there before the tests run
    (an environment variable read by your app), or ``db.configure(bind=...)``
    in this fixture.

``wsgi_sqla_db``
    Request it (or mark tests ``@pytest.mark.usefixtures("wsgi_sqla_db")``,
    or make an autouse fixture of yours depend on it) to run the test inside
    :func:`wsgi_sqla.testing.isolated`: the sessions are bound to one
    connection in an outer transaction with savepoint joining, so the
    middleware, ``transaction()`` and session commits made during the test
    release savepoints, and the outer transaction is rolled back when the test
    ends. It returns the :class:`~wsgi_sqla.testing.Isolation`, whose
    ``connection`` reads everything the test wrote.

The test body runs outside any unit of work, as a script does: write
set-up data inside ``with transaction(db):`` (a session used directly in the
test body is discarded, with a ``StaleSessionWarning``, by the next request or
block, exactly as in production), and read results through
``wsgi_sqla_db.connection`` or inside ``transaction()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy.orm import scoped_session

from .testing import Isolation, isolated

__all__ = ["wsgi_sqla_db", "wsgi_sqla_sessions"]


@pytest.fixture
def wsgi_sqla_sessions() -> scoped_session[Any] | Sequence[scoped_session[Any]]:
    """The scoped session(s) ``wsgi_sqla_db`` isolates: override this fixture."""
    pytest.fail(
        "wsgi_sqla_db needs to know which scoped session(s) to isolate: define a fixture "
        "named wsgi_sqla_sessions in your conftest.py that returns them, e.g.\n\n"
        "    @pytest.fixture\n"
        "    def wsgi_sqla_sessions():\n"
        "        return myapp.db\n",
        pytrace=False,
    )


@pytest.fixture
def wsgi_sqla_db(
    wsgi_sqla_sessions: scoped_session[Any] | Sequence[scoped_session[Any]],
) -> Iterator[Isolation]:
    """Run the test with the sessions bound to outer transactions rolled back at its end."""
    if isinstance(wsgi_sqla_sessions, scoped_session):
        sessions: Sequence[Any] = (wsgi_sqla_sessions,)
    elif isinstance(wsgi_sqla_sessions, (list, tuple)):
        sessions = wsgi_sqla_sessions
    else:
        raise TypeError(
            "wsgi_sqla_db: the wsgi_sqla_sessions fixture must return a scoped_session "
            f"or a list/tuple of them, got {wsgi_sqla_sessions!r}"
        )
    with isolated(*sessions) as isolation:
        yield isolation
