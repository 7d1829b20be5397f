"""The six systems under comparison, serving the same four requests.

Every system is a Flask application with the same routes doing the same
database work through a scoped session; only the way the unit of work is
ended differs:

``hand-written``
    each view commits (or rolls back) and removes the session itself, in a
    ``try``/``finally`` of its own. Nothing can be cheaper than this, so it
    is the lower bound the others are divided by. It has the same rule as
    wsgi_sqla (commit below 400, roll back otherwise, always remove), so the
    comparison measures the mechanism, not a different policy.
``flask-hooks``
    the pattern found in Flask tutorials: ``after_request`` commits when the
    status is below 400 and rolls back otherwise, ``teardown_appcontext``
    removes the session.
``repoze.tm2``
    ``repoze.tm.TM`` with its ``default_commit_veto`` around the Flask app,
    the session joined to the transaction by ``zope.sqlalchemy.register``.
``flask-sqlalchemy``
    Flask-SQLAlchemy's own idiom: ``db.session``, an explicit
    ``db.session.commit()`` in the views that write and succeed, and its
    teardown that removes the session (and so rolls back whatever was not
    committed).
``advanced-alchemy``
    Advanced Alchemy's Flask extension in ``autocommit`` mode: the views take
    the request's session from ``alchemy.get_sync_session()``; its
    ``after_request`` commits a 2xx and closes the session, its teardown
    closes whatever is left (so a 4xx rolls back).
``wsgi_sqla``
    ``app.wsgi_app = SessionMiddleware(app.wsgi_app, Session)``.

The instructions table has one more row, :data:`PASS_THROUGH`: the
hand-written views inside the smallest middleware of wsgi_sqla's shape, which
handles no session at all; its excess over the hand-written bound is what the
shape costs by itself.

The requests: ``GET /nodb`` never touches the database, ``GET /read`` reads
one row, ``POST /insert`` inserts one row and answers 201, ``POST /invalid``
inserts (and flushes) one row, then answers 400, so the row must not stay.

repoze.tm2, zope.sqlalchemy, Flask-SQLAlchemy and Advanced Alchemy are imported only when
their system is built, so that the test suite can use the rest of this
module with the ``test`` extra alone.

For gunicorn: ``gunicorn 'bench.apps:wsgi("wsgi_sqla", "sqlite:///...")'``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask
from sqlalchemy import Engine, String, create_engine, event, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from wsgi_sqla import IdempotencyKeys, Retry, SessionMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = [
    "LOWER_BOUND",
    "PASS_THROUGH",
    "REFERENCES",
    "REQUESTS",
    "SYSTEMS",
    "VARIANTS",
    "Item",
    "Request",
    "System",
    "build",
    "make_engine",
    "reset_table",
    "wsgi",
]


class Base(DeclarativeBase):
    """Declarative base of the benchmark's one table."""


class Item(Base):
    """One row of ``bench_items``; row 1 is what ``GET /read`` reads."""

    __tablename__ = "bench_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


@dataclass(frozen=True)
class Request:
    """One kind of request: its label, method, path and the status it must get."""

    label: str
    method: str
    path: str
    status: int


REQUESTS = (
    Request("no database", "GET", "/nodb", 200),
    Request("read one row", "GET", "/read", 200),
    Request("insert one row", "POST", "/insert", 201),
    Request("insert, then 400", "POST", "/invalid", 400),
)


@dataclass(frozen=True)
class System:
    """A built system: the WSGI application and the engine its requests use."""

    name: str
    app: WSGIApplication
    engine: Engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL with synchronous=NORMAL is the usual setting for a web application
    # on SQLite: a commit costs no fsync, so the figures show the code under
    # test rather than the disk.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def tune(engine: Engine) -> Engine:
    """Apply the benchmark's per-connection settings to ``engine`` (SQLite only)."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_engine(url: str) -> Engine:
    """An engine with SQLAlchemy's defaults, as users create it."""
    return tune(create_engine(url))


def reset_table(engine: Engine) -> None:
    """(Re)create ``bench_items`` holding only row 1."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        # No explicit id: PostgreSQL's sequence must hand out 2 to the next insert.
        first = connection.execute(insert(Item).values(name="first")).inserted_primary_key
    if first is None or first[0] != 1:
        raise RuntimeError(f"bench_items: the first row got id {first}, expected 1")


# -- the work, the same for every system -----------------------------------


def _read(session: Any, model: Any) -> str:
    row = session.get(model, 1)
    return str(row.name)


def _insert(session: Any, model: Any) -> None:
    session.add(model(name="bench"))
    session.flush()


def _plain_views(app: Flask, session: Any, model: Any) -> None:
    """Views that leave ending the unit of work to someone else."""

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return _read(session, model)

    @app.post("/insert")
    def insert() -> tuple[str, int]:
        _insert(session, model)
        return "created", 201

    @app.post("/invalid")
    def invalid() -> tuple[str, int]:
        _insert(session, model)
        return "invalid", 400


# -- the systems -----------------------------------------------------------


def _scoped(url: str) -> tuple[Engine, scoped_session[Any]]:
    engine = make_engine(url)
    return engine, scoped_session(sessionmaker(bind=engine))


def _hand_written(url: str) -> System:
    engine, Session = _scoped(url)
    app = Flask("hand_written")

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        try:
            name = _read(Session, Item)
            Session.commit()
            return name
        finally:
            Session.remove()

    @app.post("/insert")
    def insert() -> tuple[str, int]:
        try:
            _insert(Session, Item)
            Session.commit()
            return "created", 201
        finally:
            Session.remove()

    @app.post("/invalid")
    def invalid() -> tuple[str, int]:
        try:
            _insert(Session, Item)
            Session.rollback()
            return "invalid", 400
        finally:
            Session.remove()

    return System("hand-written", app, engine)


def _flask_hooks(url: str) -> System:
    from flask import Response

    engine, Session = _scoped(url)
    app = Flask("flask_hooks")
    _plain_views(app, Session, Item)

    @app.after_request
    def end_unit(response: Response) -> Response:
        if response.status_code < 400:
            Session.commit()
        else:
            Session.rollback()
        return response

    @app.teardown_appcontext
    def remove_session(_exc: BaseException | None) -> None:
        Session.remove()

    return System("flask-hooks", app, engine)


def _repoze_tm2(url: str) -> System:
    from repoze.tm import TM, default_commit_veto  # type: ignore[import-untyped]
    from zope.sqlalchemy import register  # type: ignore[import-untyped]

    engine, Session = _scoped(url)
    register(Session)
    app = Flask("repoze_tm2")
    _plain_views(app, Session, Item)
    app.wsgi_app = TM(app.wsgi_app, commit_veto=default_commit_veto)  # type: ignore[method-assign]
    return System("repoze.tm2", app, engine)


def _flask_sqlalchemy(url: str) -> System:
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("flask_sqlalchemy")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)

    class FsaItem(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_items"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(80))

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return _read(db.session, FsaItem)

    @app.post("/insert")
    def insert() -> tuple[str, int]:
        _insert(db.session, FsaItem)
        db.session.commit()
        return "created", 201

    @app.post("/invalid")
    def invalid() -> tuple[str, int]:
        _insert(db.session, FsaItem)
        return "invalid", 400

    with app.app_context():
        engine = tune(db.engine)
    return System("flask-sqlalchemy", app, engine)


def _advanced_alchemy(url: str) -> System:
    from advanced_alchemy.extensions.flask import AdvancedAlchemy, SQLAlchemySyncConfig

    engine = make_engine(url)
    app = Flask("advanced_alchemy")
    alchemy = AdvancedAlchemy(
        SQLAlchemySyncConfig(engine_instance=engine, commit_mode="autocommit"), app
    )

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return _read(alchemy.get_sync_session(), Item)

    @app.post("/insert")
    def insert() -> tuple[str, int]:
        _insert(alchemy.get_sync_session(), Item)
        return "created", 201

    @app.post("/invalid")
    def invalid() -> tuple[str, int]:
        _insert(alchemy.get_sync_session(), Item)
        return "invalid", 400

    return System("advanced-alchemy", app, engine)


def _wsgi_sqla(url: str, name: str = "wsgi_sqla", **options: Any) -> System:
    engine, Session = _scoped(url)
    app = Flask("wsgi_sqla")
    _plain_views(app, Session, Item)
    app.wsgi_app = SessionMiddleware(app.wsgi_app, Session, **options)  # type: ignore[method-assign]
    return System(name, app, engine)


def _with_retry(url: str) -> System:
    return _wsgi_sqla(url, "wsgi_sqla, retry=Retry(3)", retry=Retry(3))


def _with_idempotency(url: str) -> System:
    keys = IdempotencyKeys()
    system = _wsgi_sqla(url, "wsgi_sqla, idempotency=IdempotencyKeys()", idempotency=keys)
    keys.table.create(system.engine, checkfirst=True)
    return system


def _with_otel_api(url: str) -> System:
    # The API installed, no provider set: what an application pays that has the API
    # (often pulled in by another package) and configures nothing.
    return _wsgi_sqla(url, OTEL_API)


def _with_otel_sdk(url: str) -> System:
    from .telemetry import configure

    configure("sdk")  # the SDK's providers, spans batched to an exporter that drops them
    return _wsgi_sqla(url, OTEL_SDK)


class _PassThrough:
    """The smallest middleware of wsgi_sqla's shape, with no session handling at all.

    What any middleware must do that keeps something current for the
    application's code (a unit of work) in the application's call, in the
    making of each chunk of the body and in its ``close()``: ``start_response``
    passed through a function of its own, a context variable set and reset
    around each of those calls, and an iterable of its own handed to the
    server. Around the hand-written views it is the instructions table's
    reference row: what the shape costs by itself, which no session handling
    inside it could remove.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        mark = object()
        token = _marked.set(mark)
        try:

            def passed(status: str, headers: Any, exc_info: Any = None) -> Any:
                return start_response(status, headers, exc_info)

            app_iter = self.app(environ, passed)
        finally:
            _marked.reset(token)
        return _PassedBody(app_iter, mark)


class _PassedBody:
    __slots__ = ("app_iter", "mark")

    def __init__(self, app_iter: Iterable[bytes], mark: object) -> None:
        self.app_iter = app_iter
        self.mark = mark

    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self.app_iter)
        mark = self.mark
        while True:
            token = _marked.set(mark)
            try:
                chunk = next(iterator, None)
            finally:
                _marked.reset(token)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        token = _marked.set(self.mark)
        try:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()
        finally:
            _marked.reset(token)


_marked: contextvars.ContextVar[object] = contextvars.ContextVar("bench_marked")


def _hand_written_passed_through(url: str) -> System:
    system = _hand_written(url)
    app = system.app
    assert isinstance(app, Flask)
    app.wsgi_app = _PassThrough(app.wsgi_app)  # type: ignore[method-assign]
    return System(PASS_THROUGH, app, system.engine)


LOWER_BOUND = "hand-written"
#: The reference row of ``--instructions``: not a way to end a unit, the shape's own cost.
PASS_THROUGH = "hand-written in a pass-through middleware"

SYSTEMS: dict[str, Callable[[str], System]] = {
    "hand-written": _hand_written,
    "flask-hooks": _flask_hooks,
    "repoze.tm2": _repoze_tm2,
    "flask-sqlalchemy": _flask_sqlalchemy,
    "advanced-alchemy": _advanced_alchemy,
    "wsgi_sqla": _wsgi_sqla,
}


#: wsgi_sqla with one optional feature on, for what each costs (``--instructions``).
#: Replicas are not here: they need PostgreSQL or MariaDB, and these run on SQLite.
VARIANTS: dict[str, Callable[[str], System]] = {
    "wsgi_sqla, retry=Retry(3)": _with_retry,
    # The benchmark's requests carry no Idempotency-Key: what the feature costs them.
    "wsgi_sqla, idempotency=IdempotencyKeys()": _with_idempotency,
}
#: The OpenTelemetry variants: the only ones whose process may import the API (see
#: bench.instructions: every other system runs as a user without the otel extra does).
OTEL_API = "wsgi_sqla, OpenTelemetry API without providers"
OTEL_SDK = "wsgi_sqla, OpenTelemetry SDK"
OTEL_VARIANTS = (OTEL_API, OTEL_SDK)
VARIANTS[OTEL_API] = _with_otel_api
VARIANTS[OTEL_SDK] = _with_otel_sdk


#: Rows that are no system but show where a system's cost comes from (``--instructions``).
REFERENCES: dict[str, Callable[[str], System]] = {PASS_THROUGH: _hand_written_passed_through}


def build(name: str, url: str) -> System:
    """Build system (or variant, or reference) ``name`` against the database at ``url``."""
    builder = SYSTEMS.get(name) or VARIANTS.get(name) or REFERENCES.get(name)
    if builder is None:
        known = ", ".join([*SYSTEMS, *VARIANTS, *REFERENCES])
        raise ValueError(f"unknown system {name!r}; the systems are: {known}")
    return builder(url)


def wsgi(name: str, url: str) -> WSGIApplication:
    """The WSGI application of system ``name``, for gunicorn's ``module:call(...)``."""
    return build(name, url).app
