"""Read replicas: one route per unit of work, and read-your-writes from the commit position.

The user's guide is ``docs/deploying/replicas.rst``; each module's docstring
says why it is apart:

* :mod:`.router`: :class:`Replicas`, the configuration, validated once and
  shared by its owners, with the state of their replicas;
* :mod:`.tokens`: position tokens (pure);
* :mod:`.dialects`: PostgreSQL and MariaDB positions, lag, read-only (pure
  parsing, plus the SQL);
* :mod:`.health`: per-replica state and the engine events;
* :mod:`.monitor`: the lag monitor thread and its fork handling;
* :mod:`.route`: one unit's choice of replica or primary;
* :mod:`.unit`: the routed unit of work and how sessions reach its route.

This module only re-exports.
"""

from .health import ReplicaWriteError
from .route import Route
from .router import Replicas, check_replicas, default_replica_reads
from .tokens import POSITION_COOKIE, POSITION_HEADER
from .unit import RoutedUnit, committed_positions, use_primary

__all__ = [
    "POSITION_COOKIE",
    "POSITION_HEADER",
    "ReplicaWriteError",
    "Replicas",
    "Route",
    "RoutedUnit",
    "check_replicas",
    "committed_positions",
    "default_replica_reads",
    "use_primary",
]
