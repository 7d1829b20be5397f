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

__all__ = ["current"]

#: The unit of work running in this context (owners set and reset it).
current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "wsgi_sqla_unit", default=None
)
