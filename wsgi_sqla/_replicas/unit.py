"""A unit of work with a route, and how its sessions reach that route.

:class:`RoutedUnit` keeps :class:`~wsgi_sqla.UnitOfWork`'s rules and adds
what routing needs at their edges: after a commit that wrote, the primaries'
positions (for the next token, and for the after-commit hooks through
:func:`committed_positions`, which a Celery task enqueued there carries);
after its sessions are removed, the route's connections go back to their
pools.

Sessions are created lazily by their scoped session's registry, long after
the unit started, so the registry's factory is wrapped
(:func:`route_session_creation`): a session created while a routed unit runs
is bound through that unit's route. This replaces
``ScopedRegistry.createfunc``, which is not public SQLAlchemy API; the
replica tests fail if it changes.
"""

from __future__ import annotations

import contextvars
from typing import Any

from sqlalchemy.orm import scoped_session

from .._unit import UnitOfWork, current_unit
from .route import Route

__all__ = ["RoutedUnit", "committed_positions", "route_session_creation", "use_primary"]


class RoutedUnit(UnitOfWork):
    """A unit of work with a route: its sessions run where the route says.

    The rules are :class:`~wsgi_sqla.UnitOfWork`'s. A commit that wrote is
    followed by reading the primaries' positions; the after-commit hooks see
    them through :func:`committed_positions`; removing the sessions also
    returns the connections the route handed them to their pools.
    """

    __slots__ = ("route",)

    def __init__(self, sessions: tuple[scoped_session[Any], ...], route: Route) -> None:
        super().__init__(sessions)
        self.route: Route = route

    def commit(self) -> bool:
        """:meth:`UnitOfWork.commit`, then the primaries' positions if it wrote."""
        whole = super().commit()
        self.route.read_positions()
        return whole

    def remove(self) -> None:
        """Close the sessions, then release the route's connections."""
        try:
            super().remove()
        finally:
            self.route.release()

    def end(self) -> None:
        """:meth:`UnitOfWork.end`, with :func:`committed_positions` set for the hooks."""
        route = self.route
        if route.committed is None:
            super().end()
            return
        positions = {
            primary.label: position
            for primary, position in zip(route.replicas.primaries, route.committed, strict=True)
            if position
        }
        token = _committed.set(positions)
        try:
            super().end()
        finally:
            _committed.reset(token)


#: The positions of the unit whose after-commit hooks are running, by primary.
_committed: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "wsgi_sqla_committed_positions", default=None
)


def committed_positions() -> dict[str, str] | None:
    """In an after-commit hook of a unit that wrote: the primaries' positions after it.

    ``{primary engine URL, password hidden: position}``; ``None`` anywhere
    else. :class:`wsgi_sqla.celery.SessionTask` sends it with a task enqueued
    from such a hook, so that a worker reading from replicas sees that write.
    """
    return _committed.get()


def route_session_creation(scoped: scoped_session[Any]) -> None:
    """Make ``scoped``'s registry hand each new Session to the running unit's route."""
    registry = scoped.registry
    create = registry.createfunc
    if getattr(create, "_wsgi_sqla_routed", False):
        return

    def routed() -> Any:
        session = create()
        unit = current_unit()
        if isinstance(unit, RoutedUnit):
            route = unit.route
            for primary in route.replicas.primaries:
                if primary.scoped is scoped:
                    route.attach(session, primary)
                    break
        return session

    routed._wsgi_sqla_routed = True  # type: ignore[attr-defined]
    registry.createfunc = routed


def use_primary() -> None:
    """Run the current request on the primary, even if its predicate allowed a replica.

    Call it in a view before the request's first query, for a GET that must
    write or must read the very latest data. Without ``replicas`` it does
    nothing. Raises :class:`RuntimeError` when no unit of work is running,
    or when the request already queried a replica.
    """
    unit = current_unit()
    if unit is None:
        raise RuntimeError(
            "wsgi_sqla.use_primary() needs a running unit of work: call it inside a request "
            "wrapped by SessionMiddleware, a wsgi_sqla.transaction() block or a "
            "wsgi_sqla.celery task"
        )
    if isinstance(unit, RoutedUnit):
        unit.route.use_primary()
