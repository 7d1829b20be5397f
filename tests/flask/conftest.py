"""Fixtures for the Flask-SQLAlchemy adapter's tests: models, applications, the database matrix.

The matrix comes from tests/conftest.py (``engine``); the adapter's
applications make their own engines from its URL, and their tables are
created before and dropped after each test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import require_flask_sqlalchemy

require_flask_sqlalchemy()

import flask  # noqa: E402
from fsa_support import FsaModels, LiteModels, make_app, make_lite_app, sqlalchemy_uri  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

#: Flask-SQLAlchemy's flaskr example runs in a pytest of its own (test_vendored_flaskr.py).
collect_ignore = ["vendored_flaskr"]


@pytest.fixture
def fsa() -> FsaModels:
    """A fresh ``db = SQLAlchemy(...)`` and its models."""
    return FsaModels()


@pytest.fixture
def uri(engine: Engine) -> str:
    """``SQLALCHEMY_DATABASE_URI`` for the database under test."""
    return sqlalchemy_uri(engine)


@pytest.fixture
def app_factory(fsa: FsaModels, uri: str) -> Iterator[Callable[..., flask.Flask]]:
    """``create_app(**options)`` on the database under test; tables created, dropped after."""
    made: list[flask.Flask] = []

    def create_app(**options: Any) -> flask.Flask:
        options.setdefault("uri", uri)
        app = make_app(fsa, options.pop("uri"), **options)
        with app.app_context():
            fsa.db.drop_all()
            fsa.db.create_all()
        made.append(app)
        return app

    yield create_app
    for app in made:
        with app.app_context():
            fsa.db.session.remove()
            fsa.db.drop_all()
            for engine in fsa.db.engines.values():
                engine.dispose()


@pytest.fixture
def app(app_factory: Callable[..., flask.Flask]) -> flask.Flask:
    """The application, its tables empty."""
    return app_factory()


@pytest.fixture
def lite() -> LiteModels:
    """A fresh Flask-SQLAlchemy-Lite ``db`` and its ``User``."""
    return LiteModels()


@pytest.fixture
def lite_factory(lite: LiteModels, uri: str) -> Iterator[Callable[..., flask.Flask]]:
    """``create_app(**options)`` of a Lite application; its table created, dropped after."""
    made: list[flask.Flask] = []

    def create_app(**options: Any) -> flask.Flask:
        app = make_lite_app(lite, options.pop("uri", uri), **options)
        with app.app_context():
            lite.Base.metadata.drop_all(lite.db.engine)
            lite.Base.metadata.create_all(lite.db.engine)
        made.append(app)
        return app

    yield create_app
    for app in made:
        with app.app_context():
            lite.Base.metadata.drop_all(lite.db.engine)
            for engine in lite.db.engines.values():
                engine.dispose()


@pytest.fixture
def lite_app(lite_factory: Callable[..., flask.Flask]) -> flask.Flask:
    """The Lite application, its table empty."""
    return lite_factory()
