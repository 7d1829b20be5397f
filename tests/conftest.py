"""Shared fixtures: the database matrix, engines, scoped sessions and models.

Every behavioural test that asks for ``engine`` (or anything built on it)
runs once per database: SQLite always, PostgreSQL when
``WSGI_SQLA_POSTGRESQL_URL`` is set, MariaDB when ``WSGI_SQLA_MARIADB_URL``
is set. A database whose URL is set but which cannot be reached fails the
test instead of skipping it, so CI cannot go green without all three.

Live tests (every test under tests/server/, and any test marked ``live``)
start their own servers, poolers, clusters or workers; they run only when
asked, with ``WSGI_SQLA_LIVE=1`` or ``CI=true`` (see :func:`support.live_requested`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import scoped_session, sessionmaker
from support import (
    DATABASES,
    LIVE_SKIP,
    FakeServer,
    Models,
    Probe,
    database_url,
    live_requested,
    make_engine,
    serve,
)
from telemetry.recorded import Recorded, recorded

SERVER_TESTS = Path(__file__).resolve().parent / "server"

_engines: dict[str, Engine] = {}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects, so that ``-m "not live"`` works
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/server/ ``live``; skip live tests unless they are asked for."""
    skip = None if live_requested() else pytest.mark.skip(reason=LIVE_SKIP)
    for item in items:
        if item.path.is_relative_to(SERVER_TESTS):
            item.add_marker(pytest.mark.live)
        if skip is not None and item.get_closest_marker("live") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _dispose_shared_engines() -> Iterator[None]:
    yield
    for shared in _engines.values():
        shared.dispose()


@pytest.fixture(params=list(DATABASES))
def db_name(request: pytest.FixtureRequest) -> str:
    """The database this instance of the test runs against."""
    return str(request.param)


@pytest.fixture
def engine(db_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on the database under test: a fresh SQLite file, or the shared server engine."""
    if db_name == "sqlite":
        eng = make_engine(database_url(db_name, tmp_path_factory.mktemp("sqlite")))
    else:
        url = database_url(db_name, Path())
        shared = _engines.get(db_name)
        if shared is None:
            shared = _engines[db_name] = make_engine(url)
            try:
                with shared.connect():
                    pass
            except OperationalError as exc:
                pytest.fail(f"{DATABASES[db_name]}={url} is set but unreachable: {exc}")
        eng = shared
    yield eng
    if eng.dialect.name == "sqlite":
        eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[scoped_session[Any]]:
    """A thread-local scoped session bound to ``engine``."""
    scoped = scoped_session(sessionmaker(bind=engine))
    yield scoped
    scoped.remove()


@pytest.fixture
def models(session: scoped_session[Any], engine: Engine) -> Iterator[Models]:
    """Users and posts tables, created for the test and dropped after it."""
    m = Models(session, engine.dialect.name)
    m.Base.metadata.drop_all(engine)
    m.Base.metadata.create_all(engine)
    yield m
    session.remove()
    m.Base.metadata.drop_all(engine)


@pytest.fixture
def probe(engine: Engine) -> Probe:
    """A :class:`Probe` on the database under test."""
    return Probe(engine)


@pytest.fixture
def fake_server(probe: Probe) -> FakeServer:
    """:func:`support.serve`, recording the committed user names when a status arrives."""
    return functools.partial(serve, on_start_response=probe.names)


@pytest.fixture
def telemetry() -> Recorded:
    """The spans and metrics recorded from here on (the SDK's providers, in memory)."""
    return recorded()
