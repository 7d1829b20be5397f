"""UnitOfWork internals that the middleware's guarantees rest on."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla.unit import _is_live


@pytest.mark.parametrize(
    "scopefunc", [None, lambda: "one scope"], ids=["thread-local", "scopefunc"]
)
def test_liveness_check_agrees_with_registry_has(scopefunc: Any) -> None:
    scoped = scoped_session(sessionmaker(bind=create_engine("sqlite://")), scopefunc=scopefunc)
    assert _is_live(scoped) is scoped.registry.has() is False
    scoped()
    assert _is_live(scoped) is scoped.registry.has() is True
    scoped.remove()
    assert _is_live(scoped) is scoped.registry.has() is False


def test_liveness_check_is_per_thread() -> None:
    scoped = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    scoped()
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(_is_live(scoped)))
    thread.start()
    thread.join()
    assert seen == [False]
    assert _is_live(scoped)
    scoped.remove()
