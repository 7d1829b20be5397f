"""What every owner of units does with its arguments, written once.

The middleware, ``transaction()``, the Celery base and ``isolated()`` take
scoped sessions and a few options. They check them the same way, with
errors that name the API that was called, and they take the sessions on the
same way (:func:`own_sessions`): the package follows what the database
rejects of their units, and makes their engines fork safe, on those engines
only, never on every engine of the process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session

from ._fork import fork_safe
from ._pooling import explain_pooler_failures
from ._rejected import watch

__all__ = [
    "REMOVED_KEYWORDS",
    "check_seconds",
    "check_sessions",
    "own_engine",
    "own_sessions",
    "refuse_removed",
]


def check_sessions(
    sessions: Iterable[object], owner: str, *, per_request: bool = False
) -> tuple[scoped_session[Any], ...]:
    """``sessions`` as a tuple, each checked to be a ``scoped_session``; at least one.

    With ``per_request`` (the middleware), a session scoped to a framework's
    own context (Flask-SQLAlchemy's ``db.session``, scoped to the app
    context, which ends before the middleware decides) is refused, naming
    the adapter to use instead.

    :raises TypeError: naming ``owner`` (the public API that was called) when
        an argument is not a :class:`~sqlalchemy.orm.scoped_session`, or when
        there is none.
        A ``per_request`` owner also refuses a session that needs an adapter.
    :raises ValueError: when one session is given twice (it would be
        committed twice, and a unit would seem to own two sessions).
    """
    checked: list[scoped_session[Any]] = []
    for index, candidate in enumerate(sessions):
        if not isinstance(candidate, scoped_session):
            raise TypeError(
                f"{owner}: session argument {index} must be a sqlalchemy.orm.scoped_session, "
                f"got {type(candidate).__module__}.{type(candidate).__qualname__}; "
                "wrap your sessionmaker: scoped_session(sessionmaker(bind=engine))"
            )
        if per_request:
            _refuse_framework_scoped(candidate, index, owner)
        if candidate in checked:
            raise ValueError(
                f"{owner}: session argument {index} is the same scoped_session as argument "
                f"{checked.index(candidate)}; give each session once"
            )
        checked.append(candidate)
    if not checked:
        raise TypeError(
            f"{owner}: needs at least one sqlalchemy.orm.scoped_session; none was given"
        )
    return tuple(checked)


#: Where a registry's scope function comes from -> the adapter that handles that framework.
_ADAPTERS = {"flask_sqlalchemy": "wsgi_sqla.flask_sqlalchemy.init_app"}


def _refuse_framework_scoped(scoped: scoped_session[Any], index: int, owner: str) -> None:
    registry = scoped.registry
    adapter: str | None = getattr(registry, "adapter", None)
    if adapter is None:
        module = getattr(getattr(registry, "scopefunc", None), "__module__", None) or ""
        adapter = _ADAPTERS.get(module.partition(".")[0])
    if adapter is not None:
        raise TypeError(
            f"{owner}: session argument {index} is scoped to a framework's own context "
            "(Flask-SQLAlchemy's db.session lives in the Flask application context, which "
            "ends before the middleware decides, so its work would be lost or fail); "
            f"use {adapter}(app, db) instead, which wraps app.wsgi_app for you"
        )


def own_sessions(
    sessions: Iterable[object], owner: str, *, per_request: bool = False
) -> tuple[scoped_session[Any], ...]:
    """What every owner of units does once with its sessions: check them and take them on.

    :func:`check_sessions`, then: the sessions' factories are watched for
    work the database rejects (:func:`~wsgi_sqla._rejected.watch`), and each
    engine they are bound to is made :func:`~wsgi_sqla.fork_safe` and gets
    the transaction-pooler explanation. Only these engines get the
    package's listeners.
    """
    checked = check_sessions(sessions, owner, per_request=per_request)
    watch(checked)
    for scoped in checked:
        kw: dict[str, Any] = getattr(scoped.session_factory, "kw", {})
        binds: dict[Any, Any] = kw.get("binds") or {}
        for bind in (kw.get("bind"), *binds.values()):
            if isinstance(bind, Engine):
                own_engine(bind)
    return checked


def own_engine(engine: Engine) -> Engine:
    """What the package does once with an engine it was given: fork safety, pooler help.

    For engines a framework makes per application (the Flask adapters), which
    no ``sessionmaker`` of the package's owners is bound to.
    """
    fork_safe(engine)
    explain_pooler_failures(engine)
    return engine


#: Keywords removed before 1.0, with what to write instead.
REMOVED_KEYWORDS: dict[str, str] = {
    "retries": "retry=Retry(3)",
    "retry_if": "retry=Retry(3, when=...)",
    "retry_body_limit": "retry=Retry(3, body_limit=...)",
    "retry_backoff": "retry=Retry(3, backoff=...)",
    "replica_reads": "replicas=Replicas({db: [...]}, reads=...)",
    "position_secret": "replicas=Replicas({db: [...]}, secret=...)",
    "replica_backoff": "replicas=Replicas({db: [...]}, backoff=...)",
    "position_max_age": "replicas=Replicas({db: [...]}, token_max_age=...)",
    "replica_max_lag": "replicas=Replicas({db: [...]}, max_lag=...)",
}


def refuse_removed(owner: str, given: Mapping[str, object]) -> None:
    """Raise ``TypeError`` for the first keyword in ``given``, naming its new spelling.

    For the ``**removed`` catch-all of a public signature: a keyword the
    package took before 1.0 gets the configuration object that replaced it,
    any other the usual "unexpected keyword argument".
    """
    for name in given:
        spelling = REMOVED_KEYWORDS.get(name)
        if spelling is None:
            raise TypeError(f"{owner} got an unexpected keyword argument {name!r}")
        raise TypeError(f"{owner}: {name}= was removed; write {spelling}")


def check_seconds(value: object, name: str, owner: str) -> float:
    """``value`` as a float, checked to be a number of seconds (``bool`` is not one).

    :raises TypeError: naming ``owner`` and the keyword ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: {name} must be a number of seconds, got {value!r}")
    return float(value)
