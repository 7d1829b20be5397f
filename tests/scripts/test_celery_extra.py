"""The ``celery`` extra: what a user without it is told, and what it brings.

Without Celery, Python's import of ``celery`` raises ``ModuleNotFoundError``.
The test makes it so in a fresh interpreter by putting a finder first on
``sys.meta_path`` that answers for ``celery`` exactly as an absent package
does, so the rest of the environment (SQLAlchemy, the package) stays real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata

from packaging.requirements import Requirement

WITHOUT_CELERY = textwrap.dedent(
    """\
    import sys

    class NoCelery:
        def find_spec(self, name, path=None, target=None):
            if name == "celery" or name.startswith("celery."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoCelery())
    try:
        import wsgi_sqla.celery
    except ImportError as exc:
        print(type(exc).__name__, exc.name, exc, sep="|")
    """
)


def import_without_celery() -> tuple[str, str, str]:
    """The exception class, its ``name`` and its message, of ``import wsgi_sqla.celery``."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_CELERY], capture_output=True, text=True, check=True
    )
    kind, name, message = done.stdout.strip().split("|", 2)
    return kind, name, message


def test_importing_the_celery_module_without_celery_names_the_extra_to_install() -> None:
    kind, name, message = import_without_celery()
    assert kind == "ModuleNotFoundError"  # code that catches the usual exception still does
    assert name == "celery"
    assert 'pip install "wsgi_sqla[celery]"' in message


def test_importing_the_package_without_celery_works() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_CELERY.replace("wsgi_sqla.celery", "wsgi_sqla")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == ""


def test_the_celery_extra_brings_celery_types_so_session_task_is_typed() -> None:
    requirements = [Requirement(r) for r in metadata.requires("wsgi_sqla") or ()]
    in_extra = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "celery"})}
    assert {"celery", "celery-types"} <= in_extra
