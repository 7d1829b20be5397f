"""The version matrix: each supported Python, each SQLAlchemy point, the oldest Flask.

``nox`` runs every combination below (``nox -l`` lists them). Each session
installs the checkout with its ``test`` extra and the pinned versions, then
runs the test suite on SQLite, and on PostgreSQL when
``WSGI_SQLA_POSTGRESQL_URL`` is set. MariaDB and the real-server tests
(``tests/server/``) run on the main interpreter only, in ``.ci/run``'s
README test command: the matrix checks the library against its dependency
versions, not the servers again.

A combination whose Python is missing fails (``error_on_missing_interpreters``)
instead of being skipped: with pyenv, put every version on the shims, e.g.
``PYENV_VERSION=3.11.7:3.10.13:3.12.1:3.13.0 nox``.
"""

from __future__ import annotations

import nox

nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"  # a missing Python is a failure, never a download
nox.options.reuse_existing_virtualenvs = False
nox.options.default_venv_backend = "venv"

# The oldest releases declared in setup.cfg, and tested here.
SQLALCHEMY_OLDEST = "2.0.0"
SQLALCHEMY_NEWEST_20 = "2.0.58"
SQLALCHEMY_NEWEST = "2.1.9"
FLASK_OLDEST = ("Flask==3.0.0", "Werkzeug==3.0.0")

# Not the cross product: every Python once, every SQLAlchemy point at least
# once, the oldest everything together on the oldest Python. The main
# interpreter of .ci/run (3.11, the newest releases) is a further point.
COMBINATIONS = [
    nox.param("3.10", SQLALCHEMY_OLDEST, FLASK_OLDEST, id="py3.10-sqla2.0.0-flask3.0.0"),
    nox.param("3.11", SQLALCHEMY_NEWEST_20, (), id=f"py3.11-sqla{SQLALCHEMY_NEWEST_20}"),
    nox.param("3.12", SQLALCHEMY_NEWEST, (), id=f"py3.12-sqla{SQLALCHEMY_NEWEST}"),
    nox.param("3.13", SQLALCHEMY_NEWEST_20, (), id=f"py3.13-sqla{SQLALCHEMY_NEWEST_20}"),
]


@nox.session
@nox.parametrize(("python", "sqlalchemy", "pins"), COMBINATIONS)
def tests(session: nox.Session, sqlalchemy: str, pins: tuple[str, ...]) -> None:
    """The test suite, minus MariaDB and the real-server tests, on one combination."""
    session.install(".[test]", f"SQLAlchemy=={sqlalchemy}", *pins)
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
