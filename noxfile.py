"""Every check CI runs, as sessions a contributor runs the same way (``nox -l`` lists them).

``nox`` with no arguments runs them all, one after the other. ``.ci/run``,
after the README's test command, runs the same sessions as two nox commands at
once: ``nox -k tests`` (the matrix) and ``nox -k "not tests"`` (the rest):

* ``tests``: the version matrix, each supported Python, each SQLAlchemy
  point, the oldest Flask. Each combination installs the checkout with its
  ``test`` extra and the pinned versions, then runs the test suite on SQLite,
  and on PostgreSQL when ``WSGI_SQLA_POSTGRESQL_URL`` is set. MariaDB and the
  real-server tests (``tests/server/``) run on the main interpreter only, in
  ``.ci/run``'s README test command: the matrix checks the library against
  its dependency versions, not the servers again.
* ``lint``: ruff check and ruff format --check.
* ``typing``: mypy --strict and pyright on the package and on tests/ (pyright strict on
  tests/typing/typed_*.py, a user's typed models and Celery tasks, checked first with only
  the ``celery`` extra installed).
* ``docs``: the build Read the Docs runs, in a venv with ``.[docs]`` only,
  warnings fatal.
* ``release``: build, twine check, the wheel's and the sdist's contents, a
  smoke test of the wheel in a fresh venv, ``pyright --verifytypes`` at 100%.

The tools come from the dependency groups in ``pyproject.toml``; ``typing``
and ``release`` run pyright, which needs Node.js on PATH and refuses to run
without it (the pyright package would download a Node.js otherwise).

A matrix combination whose Python is missing fails
(``error_on_missing_interpreters``) instead of being skipped: with pyenv,
put every version on the shims, e.g.
``PYENV_VERSION=3.11.7:3.10.13:3.12.1:3.13.0 nox``. The other sessions run
on the interpreter nox runs on.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"  # a missing Python is a failure, never a download
nox.options.reuse_existing_virtualenvs = False
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
# What ruff checks and formats: every Python file of the repository.
PYTHON_PATHS = ("wsgi_sqla", "harness", "tests", "examples", "bench", "docs", "noxfile.py", ".ci")

# The oldest releases declared in setup.cfg, and tested here.
SQLALCHEMY_OLDEST = "2.0.0"
SQLALCHEMY_NEWEST_20 = "2.0.58"
SQLALCHEMY_NEWEST = "2.1.9"
FLASK_OLDEST = ("Flask==3.0.0", "Werkzeug==3.0.0")

# Not the cross product: every Python once, every SQLAlchemy point at least
# once, the oldest everything together on the oldest Python. The main
# interpreter of .ci/run (3.11, the newest releases) is a further point.
# The last field names the test requirements a combination cannot install:
# Flask-SQLAlchemy 3.1 needs SQLAlchemy>=2.0.16 (and Flask-Migrate needs
# Flask-SQLAlchemy), so on SQLAlchemy 2.0.0 the tests needing them skip,
# each saying so; every other combination runs them.
NEEDS_SQLALCHEMY_2_0_16 = ("Flask-SQLAlchemy", "Flask-Migrate")
COMBINATIONS = [
    nox.param(
        "3.10",
        SQLALCHEMY_OLDEST,
        FLASK_OLDEST,
        NEEDS_SQLALCHEMY_2_0_16,
        id="py3.10-sqla2.0.0-flask3.0.0",
    ),
    nox.param("3.11", SQLALCHEMY_NEWEST_20, (), (), id=f"py3.11-sqla{SQLALCHEMY_NEWEST_20}"),
    nox.param("3.12", SQLALCHEMY_NEWEST, (), (), id=f"py3.12-sqla{SQLALCHEMY_NEWEST}"),
    nox.param("3.13", SQLALCHEMY_NEWEST_20, (), (), id=f"py3.13-sqla{SQLALCHEMY_NEWEST_20}"),
]


def test_requirements(left_out: tuple[str, ...]) -> list[str]:
    """setup.cfg's ``test`` extra, without the distributions named in ``left_out``."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.extras_require"]["test"].splitlines()
    requirements = [
        line.strip() for line in lines if line.strip() and not line.strip().startswith("#")
    ]
    dropped = {name.lower() for name in left_out}
    kept = [
        r for r in requirements if re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() not in dropped
    ]
    if len(requirements) - len(kept) != len(dropped):
        raise ValueError(f"{sorted(left_out)} are not all in setup.cfg's test extra")
    return kept


@nox.session
@nox.parametrize(("python", "sqlalchemy", "pins", "left_out"), COMBINATIONS)
def tests(
    session: nox.Session, sqlalchemy: str, pins: tuple[str, ...], left_out: tuple[str, ...]
) -> None:
    """The test suite, minus MariaDB and the real-server tests, on one combination."""
    session.install(".", *test_requirements(left_out), f"SQLAlchemy=={sqlalchemy}", *pins)
    session.run(
        "python",
        "-c",
        "import sys, importlib.metadata as m; print(sys.version.split()[0], *("
        "f'{n} {m.version(n)}' for n in ('SQLAlchemy', 'Flask', 'Werkzeug')), sep=', ')",
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--ignore=tests/server",
        *session.posargs,
        env={"WSGI_SQLA_MARIADB_URL": ""},
    )


def group(name: str) -> tuple[str, ...]:
    """The requirements of one dependency group of pyproject.toml (any pip installs them)."""
    return tuple(nox.project.dependency_groups(PYPROJECT, name))


def require_node(session: nox.Session) -> None:
    # pyright from the package index runs on Node.js; without node it would download one. Refuse.
    if shutil.which("node") is None:
        session.error("pyright needs Node.js and none is on PATH: apt-get install nodejs")


def fresh_dir(session: nox.Session, name: str) -> Path:
    path = Path(session.create_tmp()).resolve() / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check on every Python file."""
    session.install(*group("lint"))
    session.run("ruff", "check", *PYTHON_PATHS)
    session.run("ruff", "format", "--check", *PYTHON_PATHS)


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict and pyright on the package, harness/, bench/ and the tests.

    First with the package's own extras only (not ``test``): tests/typing/typed_*.py hold a
    user's typed models and Celery tasks, whose Celery annotations must come from the
    ``celery`` extra (``celery-types``), as a user gets them. Then with the ``test`` and
    ``bench`` extras: bench/ and the whole of tests/ (pyright's modes and roots come from
    [tool.pyright] in pyproject.toml).
    """
    require_node(session)
    python = str(Path(session.bin) / "python")
    typed = ("tests/typing/typed_models.py", "tests/typing/typed_tasks.py")
    # The extras whose imports the package guards: Celery, Flask-SQLAlchemy (and Lite).
    session.install("-e", ".[celery,flask-sqlalchemy,flask-sqlalchemy-lite]", *group("typing"))
    session.run("mypy", "--strict", "wsgi_sqla")
    # harness/ (what tests and bench start) imports psycopg for PgBouncer's console.
    session.install("psycopg[binary]>=3.1")
    session.run("mypy", "--strict", "harness")
    session.run("mypy", "--strict", *typed)
    session.run("pyright", "--pythonpath", python, *typed)
    session.install("-e", ".[test,bench]")
    session.run("mypy", "--strict", "bench")
    # mypy names a module after its package (__init__.py); a test directory without one that
    # has a conftest.py of its own, like tests/, would make two modules named conftest, so
    # each such directory is checked on its own, with tests/ on the path for the helpers.
    apart = sorted(
        conftest.parent.relative_to(ROOT).as_posix()
        for conftest in (ROOT / "tests").glob("*/conftest.py")
        if not (conftest.parent / "__init__.py").exists()
    )
    session.run("mypy", "--strict", "tests", *(f"--exclude=^{d}/" for d in apart))
    for directory in apart:
        session.run("mypy", "--strict", directory, env={"MYPYPATH": "tests"})
    session.run("pyright", "--pythonpath", python)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation as Read the Docs builds it: ``.[docs]`` only, every warning fatal."""
    session.install(".[docs]")
    html = fresh_dir(session, "docs-html")
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(html))


@nox.session
def release(session: nox.Session) -> None:
    """Build, twine check, the distributions' contents, the wheel's smoke test and type score."""
    require_node(session)
    session.install(*group("release"))
    # Outside the checkout: the smoke test refuses a wsgi_sqla imported from under it.
    with tempfile.TemporaryDirectory(prefix="wsgi_sqla-release-") as tmp:
        check_distributions(session, Path(tmp))


def check_distributions(session: nox.Session, work: Path) -> None:
    dist = work / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT), silent=True)
    session.run("twine", "check", "--strict", *sorted(str(p) for p in dist.iterdir()))

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    version = config["metadata"]["version"]
    wheel = dist / f"wsgi_sqla-{version}-py3-none-any.whl"
    sdist = dist / f"wsgi_sqla-{version}.tar.gz"
    if not (wheel.is_file() and sdist.is_file()):
        session.error(f"expected {wheel.name} and {sdist.name} in {sorted(os.listdir(dist))}")

    # The wheel holds the package's files (with py.typed) and its metadata, nothing else.
    package = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "wsgi_sqla").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".typed"}
    }
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {
            n for n in archive.namelist() if not n.startswith(f"wsgi_sqla-{version}.dist-info/")
        }
    if in_wheel != package:
        session.error(
            f"the wheel differs from the package: extra {sorted(in_wheel - package)}, "
            f"missing {sorted(package - in_wheel)}"
        )
    with tarfile.open(sdist) as archive:
        in_sdist = set(archive.getnames())
    required = ("LICENSE", "CHANGES.rst", "README.rst", "docs/conf.py", "docs/index.rst")
    required += ("examples/flask_app.py", "examples/bottle_app.py")
    missing = [m for m in required if f"wsgi_sqla-{version}/{m}" not in in_sdist]
    if missing:
        session.error(f"the sdist lacks {missing}")

    # The wheel in a fresh venv, imported from outside the checkout.
    # celery-types: Celery ships no annotations, and SessionTask derives from its Task.
    venv = work / "venv"
    session.run("python", "-m", "venv", str(venv))
    venv_bin = venv / "bin"
    pip = str(venv_bin / "pip")
    session.run(
        pip, "install", "-q", str(wheel), "celery>=5.3", "celery-types>=0.22", external=True
    )
    with session.chdir(work):
        smoke = str(ROOT / ".ci" / "smoke_wheel.py")
        session.run(str(venv_bin / "python"), smoke, str(ROOT), version, external=True)
    # Type completeness of the installed wheel's public API (SQLAlchemy's own types not counted).
    # pyright finds the package through VIRTUAL_ENV and PATH (--pythonpath does not reach
    # --verifytypes), which session.run would set to the session's own venv: hence subprocess.
    # pyright exits 1 below 100%, so the score line is what decides.
    command = [str(Path(session.bin) / "pyright"), "--verifytypes", "wsgi_sqla", "--ignoreexternal"]
    session.log(" ".join(command))
    path = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    report = subprocess.run(
        command,
        cwd=work,
        env={**os.environ, "VIRTUAL_ENV": str(venv), "PATH": path},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in report.splitlines():
        if "Type completeness score" in line or "Symbols exported" in line:
            session.log(line.strip())
    if "Type completeness score: 100%" not in report:
        print(report)
        session.error("pyright --verifytypes wsgi_sqla is below 100%")
