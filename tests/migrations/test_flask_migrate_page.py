"""docs/migrations/flask-migrate.rst, followed step by step, does what it says.

The page is played by :mod:`migration_support` (``blog.py`` written, its
``flask db`` commands run as subprocesses in a temporary directory, with the
adapter installed by the app factory) against a fresh database; the schema
is then read through an engine of the test's own with
:func:`sqlalchemy.inspect`.
"""

from __future__ import annotations

from pathlib import Path

from migration_support import play
from sqlalchemy import Engine, inspect
from support import require_flask_sqlalchemy

require_flask_sqlalchemy()  # the page's blog.py imports them in the subprocesses

PAGE = "migrations/flask-migrate.rst"


def columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def test_flask_db_upgrade_creates_the_models_and_the_task_runs_with_the_adapter_installed(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url, until="first upgrade")
    assert "wsgi_sqla.flask_sqlalchemy.init_app(app, db)" in (project / "blog.py").read_text()
    assert set(inspect(migrated).get_table_names()) == {
        "alembic_version",
        "posts",
        "wsgi_sqla_task_runs",
    }
    assert columns(migrated, "posts") == {"id", "title"}


def test_the_second_revision_adds_the_not_null_column(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url, until="second upgrade")
    published = {c["name"]: c for c in inspect(migrated).get_columns("posts")}["published"]
    assert published["nullable"] is False
    assert published["default"] is not None


def test_flask_db_downgrade_drops_the_column(
    project: Path, database_url: str, migrated: Engine
) -> None:
    play(PAGE, project, database_url)
    assert columns(migrated, "posts") == {"id", "title"}
