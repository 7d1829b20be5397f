"""Sphinx configuration for the wsgi_sqla documentation (``sphinx-build -W docs docs/_build``)."""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path.insert(0, str(_here / "_ext"))
sys.path.insert(0, str(_here.parent))

project = "wsgi_sqla"
author = "wsgi_sqla contributors"
copyright = "2026, wsgi_sqla contributors"
release = _version("wsgi_sqla")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "testrole",
    "optionalglob",
]

# The repository the :test: role checks and links into.
test_role_root = str(_here.parent)
# No public repository URL is declared yet; set e.g.
# "https://github.com/<owner>/wsgi_sqla/blob/main/{path}" to turn the names into links.
test_role_url = None

autodoc_member_order = "bysource"
autodoc_typehints = "description"

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"wsgi_sqla {release}"


def _public_data_docstring(app, what, name, obj, options, lines):  # type: ignore[no-untyped-def]
    """Give ``wsgi_sqla.CONSTANT`` the ``#:`` comment written where it is defined.

    Autodoc looks for the comment in ``wsgi_sqla/__init__.py``, which only
    re-exports the name, and would show the value's type's docstring instead.
    """
    from sphinx.pycode import ModuleAnalyzer

    import wsgi_sqla

    module, _, attribute = name.rpartition(".")
    if what != "data" or module != "wsgi_sqla":
        return
    for private in sorted(
        value.__name__
        for value in vars(wsgi_sqla).values()
        if getattr(value, "__name__", "").startswith("wsgi_sqla._")
        and type(value).__name__ == "module"
    ):
        analyzer = ModuleAnalyzer.for_module(private)
        comment = analyzer.find_attr_docs().get(("", attribute))
        if comment:
            lines[:] = list(comment)
            return


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-docstring", _public_data_docstring)
