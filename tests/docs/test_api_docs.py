"""The API reference documents every public name, so a new export cannot go unlisted."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import wsgi_sqla
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
