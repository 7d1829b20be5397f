"""docs/migrations/alembic.rst, followed step by step, does what it says.

The page is played by :mod:`migration_support` (its files written, its
``alembic`` commands run as subprocesses in a temporary directory) against
a fresh database; the schema is then read through an engine of the test's
own with :func:`sqlalchemy.inspect`.
"""

from __future__ import annotations

from pathlib import Path

from migration_support import play
from sqlalchemy import Engine, inspect

PAGE = "migrations/alembic.rst"


def columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def test_the_first_upgrade_creates_the_models_and_the_package_tables(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url, until="first upgrade")
    assert set(inspect(migrated).get_table_names()) == {
        "alembic_version",
        "users",
        "wsgi_sqla_idempotency_keys",
        "wsgi_sqla_task_runs",
    }
    assert columns(migrated, "users") == {"id", "name"}


def test_the_second_revision_adds_the_column(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url, until="second upgrade")
    assert columns(migrated, "users") == {"id", "name", "email"}
    assert len(list((project / "migrations" / "versions").glob("*.py"))) == 2


def test_the_downgrade_drops_the_column_and_keeps_the_tables(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url)
    assert columns(migrated, "users") == {"id", "name"}
    assert "wsgi_sqla_idempotency_keys" in inspect(migrated).get_table_names()
