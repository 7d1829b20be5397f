"""An ActiveRecord-style declarative base on top of a scoped session.

``save()``, ``update()`` and ``delete()`` flush at once, so that a
constraint violation surfaces in the view that caused it, where it can be
turned into a 409, instead of at commit time. They never commit: the unit of
work around them (the request, a ``transaction()`` block, a task) decides
that. When their flush fails they roll the session back (a session whose
flush failed cannot be used until it is) and re-raise the original
exception unchanged, so ``IntegrityError`` stays ``IntegrityError``.

Two ways in:

* ``Model = declarative_base(session)`` for the quick, untyped route;
* ``class Base(ActiveRecordMixin, DeclarativeBase)`` with
  ``__session__ = session`` for code checked by mypy: ``User.get(1)`` is
  ``User | None`` and ``save()`` returns ``User``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, TypeVar

from sqlalchemy import MetaData, inspect
from sqlalchemy.orm import DeclarativeBase, Query, Session, scoped_session
from typing_extensions import Self

from ._unit import check_sessions

__all__ = ["ActiveRecordMixin", "declarative_base"]

logger = logging.getLogger("wsgi_sqla")

_M = TypeVar("_M", bound="ActiveRecordMixin")


class _QueryProperty:
    """``Model.query``: a legacy :class:`~sqlalchemy.orm.Query` on the current session."""

    def __get__(self, instance: object, owner: type[_M]) -> Query[_M]:
        return owner.__session__.query(owner)


class ActiveRecordMixin:
    """``get``, ``query``, ``save``, ``update`` and ``delete`` for mapped classes.

    Mix it into your own declarative base and point ``__session__`` at the
    scoped session the models use::

        class Base(ActiveRecordMixin, DeclarativeBase):
            __session__ = Session
    """

    __session__: ClassVar[scoped_session[Session]]
    query: ClassVar[_QueryProperty] = _QueryProperty()

    @classmethod
    def get(cls, ident: Any) -> Self | None:
        """The instance with primary key ``ident`` (``Session.get``), or ``None``."""
        return cls.__session__.get(cls, ident)

    def save(self) -> Self:
        """Add the instance to the session and flush; return it. Never commits."""
        session = self.__session__
        session.add(self)
        _flush(session)
        return self

    def update(self, **values: Any) -> Self:
        """Set mapped attributes from ``values``, then :meth:`save`; return the instance.

        Raises :class:`TypeError`, before anything is changed, when a name is
        not a mapped attribute of the class.
        """
        mapped = inspect(type(self)).attrs
        unknown = [name for name in values if name not in mapped]
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.update(): not mapped attribute(s) "
                f"{', '.join(map(repr, unknown))}; mapped attributes are: "
                f"{', '.join(mapped.keys())}"
            )
        for name, value in values.items():
            setattr(self, name, value)
        return self.save()

    def delete(self) -> None:
        """Delete the instance and flush. Never commits."""
        session = self.__session__
        session.delete(self)
        _flush(session)


def _flush(session: scoped_session[Session]) -> None:
    try:
        session.flush()
    except BaseException:
        try:
            session.rollback()
        except Exception:
            logger.exception("rollback after a failed flush failed too")
        raise


def declarative_base(session: scoped_session[Any], *, metadata: MetaData | None = None) -> Any:
    """A new SQLAlchemy 2.x declarative base whose models use ``session``.

    Subclasses accept ``Mapped[...]`` annotations and ``mapped_column()``
    like any :class:`~sqlalchemy.orm.DeclarativeBase`, and get
    :class:`ActiveRecordMixin`'s methods. Type checkers cannot see through
    a class made at run time; for typed code subclass the mixin instead.
    """
    (checked,) = check_sessions((session,), "declarative_base()")
    namespace: dict[str, Any] = {"__session__": checked, "__module__": __name__}
    if metadata is not None:
        namespace["metadata"] = metadata
    return type("Model", (ActiveRecordMixin, DeclarativeBase), namespace)
