"""An ActiveRecord-style declarative base on top of a scoped session.

``save()``, ``update()`` and ``delete()`` flush at once, so that a
constraint violation surfaces in the view that caused it, where it can be
turned into a 409, instead of at commit time. They never commit: the unit of
work around them (the request, a ``transaction()`` block, a task) decides
that, and they never roll back either: the original exception is raised
unchanged (``IntegrityError`` stays ``IntegrityError``) and the session's
earlier work is left alone. A unit whose flush failed cannot commit
(:class:`~wsgi_sqla.RejectedWorkError`) unless the application undoes it
itself; so a view that catches the error and answers 409 rolls back, as it
should, and one that catches it and answers 201 gets a 500 instead of a
false success.

To attempt a save that may conflict without losing the rest of the unit,
pass ``savepoint=True``: the flush runs in a savepoint
(``Session.begin_nested()``), a failure undoes only that object's changes,
and the unit commits everything else. It costs two more round trips per
call (``SAVEPOINT`` and ``RELEASE SAVEPOINT``).

Two ways in:

* ``Model = declarative_base(session)`` for the quick, untyped route;
* ``class Base(ActiveRecordMixin, DeclarativeBase)`` with
  ``__session__ = session`` for code checked by mypy: ``User.get(1)`` is
  ``User | None`` and ``save()`` returns ``User``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

from sqlalchemy import MetaData, inspect
from sqlalchemy.orm import DeclarativeBase, Query, Session, scoped_session
from typing_extensions import Self

from ._owners import check_sessions

__all__ = ["ActiveRecordMixin", "declarative_base"]

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
            __session__ = db

        class User(Base): ...

        User(name="ann").save()   # add and flush; the unit of work commits
    """

    __session__: ClassVar[scoped_session[Session]]
    query: ClassVar[_QueryProperty] = _QueryProperty()

    def __init_subclass__(cls, **kw: Any) -> None:
        """Check ``__session__`` when a class sets it, not at its first ``save()``.

        :raises TypeError: when it is not a :class:`~sqlalchemy.orm.scoped_session`
            (a ``sessionmaker``, a ``Session``, a string).
        """
        super().__init_subclass__(**kw)
        if "__session__" in cls.__dict__:
            check_sessions((cls.__dict__["__session__"],), f"{cls.__qualname__}.__session__")

    @classmethod
    def create(cls, **values: Any) -> Self:
        """Construct an instance from ``values``, :meth:`save` it and return it. Never commits."""
        return cls(**values).save()

    @classmethod
    def get(cls, ident: Any) -> Self | None:
        """The instance with primary key ``ident`` (``Session.get``), or ``None``."""
        return cls.__session__.get(cls, ident)

    def save(self, *, savepoint: bool = False) -> Self:
        """Add the instance to the session and flush; return it. Never commits.

        With ``savepoint=True`` the add and the flush run in a savepoint: if
        the flush fails, only this instance's changes are undone (it leaves
        the session) and the exception propagates; the unit can still commit
        its other work.
        """
        session = self.__session__
        _flushed(session, partial(session.add, self), savepoint)
        return self

    def update(self, **values: Any) -> Self:
        """Set mapped attributes from ``values``, then :meth:`save`; return the instance.

        Raises :class:`TypeError`, before anything is changed, when a name is
        not a mapped attribute of the class. For an update that may conflict,
        wrap it: ``with session.begin_nested(): obj.update(...)``.
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

    def delete(self, *, savepoint: bool = False) -> None:
        """Delete the instance and flush. Never commits.

        ``savepoint=True`` as for :meth:`save`: a failed flush undoes only
        this deletion.
        """
        session = self.__session__
        _flushed(session, partial(session.delete, self), savepoint)


def _flushed(
    session: scoped_session[Session], change: Callable[[], object], savepoint: bool
) -> None:
    """Make ``change`` and flush it; in a savepoint, which a failed flush undoes, if asked."""
    if savepoint:
        with session.begin_nested():
            change()  # the savepoint's commit flushes it
    else:
        change()
        session.flush()


def declarative_base(session: scoped_session[Any], *, metadata: MetaData | None = None) -> Any:
    """A new SQLAlchemy 2.x declarative base whose models use ``session``.

    Subclasses accept ``Mapped[...]`` annotations and ``mapped_column()``
    like any :class:`~sqlalchemy.orm.DeclarativeBase`, and get
    :class:`ActiveRecordMixin`'s methods. Type checkers cannot see through
    a class made at run time; for typed code subclass the mixin instead.
    """
    (checked,) = check_sessions((session,), "declarative_base()")  # before the class exists
    namespace: dict[str, Any] = {"__session__": checked, "__module__": __name__}
    if metadata is not None:
        namespace["metadata"] = metadata
    return type("Model", (ActiveRecordMixin, DeclarativeBase), namespace)


def _seen_from_sqlalchemy(function: Callable[..., Any], namespace: dict[str, Any]) -> Any:
    """``function`` run with ``namespace`` as its globals.

    SQLAlchemy points its warnings (``SAWarning``) at the first frame whose
    module name is not its own, which would be this module's; frames whose
    globals carry a ``sqlalchemy.`` name are skipped like its own, so a
    warning raised by a ``save()`` points at the application's line that
    called it.
    """
    seen = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    seen.__kwdefaults__ = function.__kwdefaults__
    seen.__doc__ = function.__doc__
    seen.__qualname__ = function.__qualname__
    seen.__module__ = function.__module__
    seen.__annotations__ = function.__annotations__
    return seen


def _point_warnings_at_the_caller() -> None:
    namespace = dict(globals(), __name__="sqlalchemy.ext.wsgi_sqla_model")
    namespace["_flushed"] = _seen_from_sqlalchemy(_flushed, namespace)
    for name in ("save", "update", "delete"):
        setattr(
            ActiveRecordMixin,
            name,
            _seen_from_sqlalchemy(ActiveRecordMixin.__dict__[name], namespace),
        )
    create = ActiveRecordMixin.__dict__["create"].__func__
    ActiveRecordMixin.create = classmethod(_seen_from_sqlalchemy(create, namespace))  # type: ignore[method-assign,assignment]


_point_warnings_at_the_caller()
