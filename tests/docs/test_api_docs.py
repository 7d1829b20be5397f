"""The API reference documents every public name, so a new export cannot go unlisted.

The public classes' docstrings are both ``help()`` and their API page: each
opens on an example of its use.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import get_origin

import pytest

import wsgi_sqla
import wsgi_sqla.celery
import wsgi_sqla.testing

API = (Path(__file__).resolve().parents[2] / "docs" / "api.rst").read_text()
DOCUMENTED = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)$", API, flags=re.MULTILINE))
TESTING_ONLY = sorted(set(wsgi_sqla.testing.__all__) - set(wsgi_sqla.__all__))


@pytest.mark.parametrize(
    "name",
    [f"wsgi_sqla.{name}" for name in wsgi_sqla.__all__]
    + [f"wsgi_sqla.testing.{name}" for name in TESTING_ONLY],
)
def test_public_name_is_in_the_api_reference(name: str) -> None:
    assert name in DOCUMENTED, f"docs/api.rst has no autodoc entry for {name}"


def test_the_version_comes_from_the_package_metadata() -> None:
    assert wsgi_sqla.__version__ == importlib.metadata.version("wsgi_sqla")


# The classes a user builds or subclasses; exceptions and warnings are only caught. Type
# aliases are not classes (Python 3.10's inspect.isclass says a Callable[...] alias is one).
PUBLIC = [*(getattr(wsgi_sqla, name) for name in wsgi_sqla.__all__), wsgi_sqla.celery.SessionTask]
BUILT = [
    c
    for c in PUBLIC
    if inspect.isclass(c) and get_origin(c) is None and not issubclass(c, BaseException)
]


@pytest.mark.parametrize("cls", BUILT, ids=lambda cls: cls.__name__)
def test_a_public_class_docstring_opens_on_an_example_of_its_use(cls: type) -> None:
    paragraphs = (inspect.getdoc(cls) or "").split("\n\n")
    # The summary line, at most one sentence more, then the example's literal block.
    opening = next((i for i, text in enumerate(paragraphs[:2]) if text.endswith("::")), None)
    assert opening is not None, f"{cls.__name__}'s docstring opens without an example"
    example = paragraphs[opening + 1]
    assert example.startswith("    ") and cls.__name__ in example, example
