"""The unit of work running in this context.

Its own module so that everything that needs to find the running unit (the
unit itself, the listeners that watch what the database rejects, retries,
replicas) can import it without importing the unit's module.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._unit import UnitOfWork

__all__ = ["current", "quiet_leftovers"]

#: The unit of work running in this context (owners set and reset it).
current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "wsgi_sqla_unit", default=None
)

#: Set by :func:`wsgi_sqla.testing.isolated`: a session a unit finds left over from an
#: earlier one with nothing in it (no transaction, no pending change) is closed without a
#: warning. A test client drops responses without closing them, which in production
#: would be a server bug worth the warning; in a test it is routine and loses nothing.
quiet_leftovers: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "wsgi_sqla_quiet_leftovers", default=False
)
