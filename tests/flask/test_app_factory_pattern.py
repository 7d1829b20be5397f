"""The app-factory pattern on this package's own scoped session (docs/models.rst).

One module-level ``db`` and its models, many applications (as a test suite
creates them), each on its own database: the session class takes its engine
from the application whose request (or block) made it, so no ``create_app()``
rebinds what another one uses. The code under "the application module" is
the documented pattern, as a user writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import flask
import pytest
from sqlalchemy import Engine, String, create_engine, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from wsgi_sqla import ActiveRecordMixin, SessionMiddleware, fork_safe, transaction

# -- the application module ------------------------------------------------------------------

app_engine: ContextVar[Engine] = ContextVar("app_engine")


class AppSession(Session):
    """A session on the engine of the application it was made for."""

    def __init__(self, **kw: Any) -> None:
        if kw.get("bind") is None:  # sessionmaker passes bind=None when it has none
            kw["bind"] = app_engine.get()
        super().__init__(**kw)


db: scoped_session[AppSession] = scoped_session(sessionmaker(class_=AppSession))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db  # type: ignore[assignment]


class Note(Base):
    __tablename__ = "factory_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(80))


def create_app(database_url: str) -> flask.Flask:
    engine = fork_safe(create_engine(database_url))
    app = flask.Flask(__name__)
    app.extensions["engine"] = engine
    views = app.wsgi_app

    def on_this_apps_engine(environ: Any, start_response: Any) -> Iterable[bytes]:
        token = app_engine.set(engine)
        try:
            return views(environ, start_response)
        finally:
            app_engine.reset(token)

    app.wsgi_app = SessionMiddleware(on_this_apps_engine, db)  # type: ignore[method-assign]

    @app.post("/notes/<text>")
    def add(text: str) -> tuple[str, int]:
        Note.create(text=text)
        return "added", 201

    return app


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[flask.Flask]]:
    made = [create_app(f"sqlite:///{tmp_path / name}.sqlite3") for name in ("one", "two")]
    for app in made:
        Base.metadata.create_all(app.extensions["engine"])
    yield made
    for app in made:
        app.extensions["engine"].dispose()


def notes(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT text FROM factory_notes"))]


def test_each_app_writes_to_its_own_database(apps: list[flask.Flask]) -> None:
    apps[0].test_client().post("/notes/first", buffered=True)
    apps[1].test_client().post("/notes/second", buffered=True)
    apps[0].test_client().post("/notes/third", buffered=True)
    assert notes(apps[0].extensions["engine"]) == ["first", "third"]
    assert notes(apps[1].extensions["engine"]) == ["second"]


def test_a_block_outside_requests_names_its_engine(apps: list[flask.Flask]) -> None:
    engine = apps[1].extensions["engine"]
    token = app_engine.set(engine)
    try:
        with transaction(db):
            Note.create(text="from a script")
    finally:
        app_engine.reset(token)
    assert notes(engine) == ["from a script"]
    assert notes(apps[0].extensions["engine"]) == []


def test_a_session_made_without_an_app_is_a_clear_error() -> None:
    with pytest.raises(LookupError, match="app_engine"), transaction(db):
        Note.create(text="nowhere")
