"""A real Flask-SQLAlchemy application, ported in one line: its own test suite still passes.

``vendored_flaskr/`` is Flask-SQLAlchemy's flaskr example (see its
VENDORED.rst) with ``wsgi_sqla.flask_sqlalchemy.init_app(app, db)`` added.
Its test suite runs as its authors wrote it, in a pytest of its own (a copy
of the directory, so nothing of this project's configuration applies but
``-W error``, as many projects configure; see :data:`WARNINGS`), on SQLite
and PostgreSQL; and
again with every ``db.session.commit()`` of its views removed, the
middleware committing instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import database_url

VENDORED = Path(__file__).parent / "vendored_flaskr"
#: The tests flaskr's suite holds (test functions times their parameters).
FLASKR_TESTS = 24
#: Every warning an error, but ResourceWarning: flaskr's ``app`` fixture never disposes the
#: engines of the app it makes for each test, so on PostgreSQL their connections are
#: collected while open. The unmodified application does exactly the same (checked by hand:
#: same warnings without the adapter's line); it is flaskr's, not the adapter's.
WARNINGS = ("-W", "error", "-W", "ignore::ResourceWarning")


def flaskr_copy(tmp_path: Path, *, own_commits: bool) -> Path:
    """A copy of the vendored application; ``own_commits=False`` strips its views' commits."""
    copy = tmp_path / "flaskr_app"
    shutil.copytree(VENDORED, copy)
    if not own_commits:
        for views in (copy / "flaskr").rglob("views.py"):
            source = views.read_text()
            stripped = re.sub(r"^\s*db\.session\.commit\(\)\n", "", source, flags=re.M)
            assert stripped != source, f"{views} had no commit to remove"
            views.write_text(stripped)
    (copy / "pytest.ini").write_text("[pytest]\n")
    return copy


def run_flaskr_suite(app_dir: Path, database: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    env.pop("FLASKR_TEST_DATABASE_URL", None)
    if database is not None:
        env["FLASKR_TEST_DATABASE_URL"] = database
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *WARNINGS, "tests"],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("own_commits", [True, False], ids=["as-written", "own-commits-removed"])
def test_flaskrs_own_suite_passes_with_the_adapter(
    tmp_path: Path, database: str, own_commits: bool
) -> None:
    url = None if database == "sqlite" else database_url(database, tmp_path)
    result = run_flaskr_suite(flaskr_copy(tmp_path, own_commits=own_commits), url)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.match(rf"{FLASKR_TESTS} passed in ", summary), summary
