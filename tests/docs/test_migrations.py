"""The migration how-tos run: a real ``upgrade`` of each example against PostgreSQL.

docs/migrations/alembic.rst (this package's own scoped session) and
docs/migrations/flask-migrate.rst (Flask-SQLAlchemy with the adapter) each
point at an example under examples/; here their migrations are applied with
the tools' own command lines, as the pages show, and the schema is checked
through a separate connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from support import database_url

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def postgresql(tmp_path: Path) -> Iterator[Engine]:
    """The PostgreSQL database, without the examples' tables or a migration history."""
    engine = create_engine(database_url("postgresql", tmp_path))

    def clean() -> None:
        with engine.begin() as connection:
            for table in ("example_tags", "example_notes", "alembic_version"):
                connection.execute(text(f"DROP TABLE IF EXISTS {table}"))

    clean()
    yield engine
    clean()
    engine.dispose()


def run(command: list[str], engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("command", "table"),
    [
        pytest.param(
            [
                str(BIN / "alembic"),
                "-c",
                "examples/alembic_migrations/alembic.ini",
                "upgrade",
                "head",
            ],
            "example_tags",
            id="alembic",
        ),
        pytest.param(
            [
                str(BIN / "flask"),
                "--app",
                "examples.flask_migrate_app",
                "db",
                "upgrade",
                "--directory",
                "examples/flask_migrate_app/migrations",
            ],
            "example_notes",
            id="flask-migrate",
        ),
    ],
)
def test_the_examples_upgrade_creates_its_schema(
    postgresql: Engine, command: list[str], table: str
) -> None:
    run(command, postgresql)
    assert inspect(postgresql).has_table(table)
    with postgresql.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
