"""Fixtures for the migrations pages' tests: a project directory and a database of its own.

Each test gets a fresh database: a SQLite file, or a database created for
this test on the PostgreSQL server of ``WSGI_SQLA_POSTGRESQL_URL`` or the
MariaDB server of ``WSGI_SQLA_MARIADB_URL`` and dropped after it (with the
variable unset the test skips, as every database test does; .ci/run fails a run
whose README command skipped one).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from support import database_url as server_url

#: How each server creates and drops a database (names are generated, never user input).
CREATE_DROP = {
    "postgresql": ('CREATE DATABASE "{}"', 'DROP DATABASE IF EXISTS "{}" WITH (FORCE)'),
    "mariadb": ("CREATE DATABASE `{}`", "DROP DATABASE IF EXISTS `{}`"),
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database created empty for this test (and dropped after it)."""
    server = server_url(request.param, tmp_path)
    if request.param == "sqlite":
        yield server
        return
    name = f"wsgi_sqla_migr_{uuid.uuid4().hex[:12]}"
    create, drop = CREATE_DROP[request.param]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(create.format(name)))
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(drop.format(name)))
        admin.dispose()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The directory a reader follows the page in."""
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def migrated(database_url: str) -> Iterator[Engine]:
    """An engine of its own on the test's database, to inspect what the commands did."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()
