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
autodoc_default_options = {"show-inheritance": False}

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"wsgi_sqla {release}"
