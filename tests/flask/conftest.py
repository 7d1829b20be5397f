"""Fixtures for the Flask-SQLAlchemy adapter's tests: models, applications, the database matrix.

The matrix comes from tests/conftest.py (``engine``); the adapter's
applications make their own engines from its URL, and their tables are
created before and dropped after each test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
from fsa_support import FsaModels, make_app, sqlalchemy_uri
from sqlalchemy import Engine


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
