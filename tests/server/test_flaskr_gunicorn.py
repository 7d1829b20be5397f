"""flaskr, a real Flask-SQLAlchemy application ported in one line, under a real gunicorn.

The application is Flask-SQLAlchemy's flaskr example (tests/flask/vendored_flaskr),
as written and with its views' ``db.session.commit()`` calls removed (the
middleware commits). Its tables are made by its own ``flask init-db``
command; the rows are read through a separate connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, text

from .support import Gunicorn, Serve

VENDORED = Path(__file__).resolve().parents[1] / "flask" / "vendored_flaskr"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def flaskr_dir(tmp_path: Path, own_commits: bool) -> Path:
    """The vendored application, or a copy of it whose views commit nothing themselves."""
    if own_commits:
        return VENDORED
    copy = tmp_path / "flaskr_no_commits"
    for source in (VENDORED / "flaskr").rglob("*"):
        target = copy / "flaskr" / source.relative_to(VENDORED / "flaskr")
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        content = source.read_bytes()
        if source.name == "views.py":
            content = b"".join(
                line
                for line in content.splitlines(keepends=True)
                if line.strip() != b"db.session.commit()"
            )
        target.write_bytes(content)
    return copy


def users(engine: Engine) -> list[str]:
    table = engine.dialect.identifier_preparer.quote("user")
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT username FROM {table} ORDER BY username"))
        return [row[0] for row in rows]


def post_titles(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT title FROM post ORDER BY id"))]


@pytest.fixture(params=[True, False], ids=["as-written", "own-commits-removed"])
def own_commits(request: pytest.FixtureRequest) -> bool:
    """Whether flaskr's views commit themselves (as written) or leave it to the middleware."""
    return bool(request.param)


@pytest.fixture
def flaskr(
    own_commits: bool, gunicorn: Serve, engine: Engine, tmp_path: Path
) -> Iterator[Gunicorn]:
    """flaskr under gunicorn (two sync workers) on the database under test, tables fresh."""
    if engine.dialect.name in ("mariadb", "mysql"):
        pytest.skip(
            "flaskr declares VARCHAR without a length, which MariaDB refuses; it runs on "
            "SQLite and PostgreSQL"
        )
    app_dir = flaskr_dir(tmp_path, own_commits=own_commits)
    env = {**os.environ, "DATABASE_URL": url_of(engine), "PYTHONPATH": str(app_dir)}
    made = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "flaskr", "init-db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    yield gunicorn(
        "flaskr_app:app", database=url_of(engine), workers=2, env={"FLASKR_DIR": str(app_dir)}
    )


def register(server: Gunicorn, username: str, path: str = "/auth/register", **headers: str) -> int:
    body = urlencode({"username": username, "password": "secret"}).encode()
    return server.request("POST", path, body, {**FORM, **headers}).status


def log_in(server: Gunicorn, username: str) -> str:
    """Register and log in ``username``: the session cookie flaskr sets."""
    assert register(server, username) == 302
    body = urlencode({"username": username, "password": "secret"}).encode()
    reply = server.request("POST", "/auth/login", body, FORM)
    assert reply.status == 302, reply.body
    return reply.headers["Set-Cookie"].split(";", 1)[0]


def test_a_registration_answers_success_and_its_row_is_there(
    flaskr: Gunicorn, engine: Engine
) -> None:
    assert register(flaskr, "ann") == 302  # flaskr's success: a redirect to the login page
    assert users(engine) == ["ann"]


def test_a_duplicate_registration_is_refused_and_the_row_stays_single(
    flaskr: Gunicorn, engine: Engine
) -> None:
    register(flaskr, "ann")
    assert register(flaskr, "ann") == 200  # flaskr answers the form again, with its error
    assert users(engine) == ["ann"]


def test_a_view_that_raises_after_writing_answers_500_and_leaves_nothing(
    flaskr: Gunicorn, engine: Engine
) -> None:
    assert register(flaskr, "ann", "/harness/raise-after-write") == 500
    assert users(engine) == []


def test_a_logged_in_users_post_answers_success_and_its_row_is_there(
    flaskr: Gunicorn, engine: Engine
) -> None:
    cookie = log_in(flaskr, "ann")
    body = urlencode({"title": "hello", "body": "first"}).encode()
    assert flaskr.request("POST", "/create", body, {**FORM, "Cookie": cookie}).status == 302
    assert post_titles(engine) == ["hello"]


def test_a_duplicate_the_constraint_refuses_answers_409_and_the_row_stays_single(
    flaskr: Gunicorn, engine: Engine
) -> None:
    assert register(flaskr, "ann", "/harness/register-unchecked") == 201
    assert register(flaskr, "ann", "/harness/register-unchecked") == 409
    assert users(engine) == ["ann"]


def test_a_failure_after_flaskrs_view_answers_500_and_keeps_only_its_own_commit(
    flaskr: Gunicorn, engine: Engine, own_commits: bool
) -> None:
    """As written, register commits before the failure; without that commit nothing stays."""
    assert register(flaskr, "ann", **{"X-Fail-After-View": "1"}) == 500
    assert users(engine) == (["ann"] if own_commits else [])
