"""``:test:`tests/test_x.py::test_name``` links a promise to the test that checks it.

The build fails (a warning, and docs are built with ``-W``) when the file does
not exist or defines no test function of that name. The file is parsed with
:mod:`ast`, never imported, so a parametrised test (``@pytest.mark.parametrize``)
counts once under its function name and test modules' imports do not matter.
``Class::test_name`` inside the file is accepted for tests written as methods.
With ``test_role_url`` set in conf.py the name links to the file.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)


@cache
def _test_names(path: Path) -> frozenset[str]:
    """Every test function in ``path``: ``name`` and ``Class::name`` for methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, functions) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(names)


def test_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: list[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    config = inliner.document.settings.env.config
    path, _, case = text.strip().partition("::")
    function = case.partition("[")[0]  # a parametrised case: name[id]
    location = inliner.document.settings.env.docname, lineno
    file = Path(config.test_role_root) / path
    problem = None
    if not function:
        problem = f"test: {text!r} must be 'tests/<file>.py::<test function>'"
    elif not file.is_file():
        problem = f"test: {path} does not exist (in {text!r})"
    elif function not in _test_names(file):
        problem = f"test: {path} defines no test function {function!r}"
    if problem:
        logger.warning(problem, location=location, type="testrole")
    literal = nodes.literal(rawtext, text.strip(), classes=["test-link"])
    if not config.test_role_url:
        return [literal], []
    node = nodes.reference(rawtext, "", refuri=config.test_role_url.format(path=path))
    node += literal
    return [node], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("test_role_root", ".", "env")
    # e.g. "https://github.com/<owner>/wsgi_sqla/blob/main/{path}"; None: no link, the name only.
    app.add_config_value("test_role_url", None, "env")
    app.add_role("test", test_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
