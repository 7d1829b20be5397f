"""Helpers the tests import explicitly (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """A component the test needs is not here: skip on a laptop, fail in CI.

    ``reason`` names what to set or install. CI (``CI=true``) must run every
    test, so there a missing database, pooler, replica or server is a failure.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a needed component is missing: {reason}", pytrace=False)
    pytest.skip(reason)
