"""UnitOfWork internals that the middleware's guarantees rest on."""

from __future__ import annotations

import _threading_local
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla import UnitOfWork
from wsgi_sqla._registry import is_live


@pytest.mark.parametrize(
    "scopefunc", [None, lambda: "one scope"], ids=["thread-local", "scopefunc"]
)
def test_liveness_check_agrees_with_registry_has(scopefunc: Any) -> None:
    scoped = scoped_session(sessionmaker(bind=create_engine("sqlite://")), scopefunc=scopefunc)
    assert is_live(scoped) is scoped.registry.has() is False
    scoped()
    assert is_live(scoped) is scoped.registry.has() is True
    scoped.remove()
    assert is_live(scoped) is scoped.registry.has() is False


def test_liveness_check_reads_sqlalchemys_thread_local_registry_directly() -> None:
    # is_live() skips registry.has() (a raised AttributeError per miss) by
    # reading the threading.local SQLAlchemy keeps; if that layout changes,
    # the fast path is silently lost, so pin it here.
    scoped = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    local = scoped.registry.registry
    assert type(local) is type(threading.local())
    scoped()
    assert "value" in local.__dict__
    scoped.remove()
    assert "value" not in local.__dict__


@pytest.mark.parametrize(
    "local_type",
    [None, _threading_local.local],
    ids=["SQLAlchemy's own threading.local", "pure-Python _threading_local.local"],
)
def test_liveness_check_is_per_thread_with_any_thread_local_type(local_type: Any) -> None:
    # is_live() reads the local's __dict__ without checking its type: a registry
    # made while threading.local was replaced (gevent's patching, the pure-Python
    # fallback) must answer the same, per thread.
    scoped = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    if local_type is not None:
        scoped.registry.registry = local_type()
    scoped()
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(is_live(scoped)))
    thread.start()
    thread.join()
    assert seen == [False]
    assert is_live(scoped) is scoped.registry.has() is True
    scoped.remove()
    assert is_live(scoped) is scoped.registry.has() is False


def _unit() -> UnitOfWork:
    return UnitOfWork((scoped_session(sessionmaker(bind=create_engine("sqlite://"))),))


def test_decide_passes_its_arguments_on_to_the_veto() -> None:
    seen: list[tuple[object, ...]] = []

    def vetoed(status: str, *, reason: str) -> bool:
        seen.append((status, reason))
        return status.startswith("4")

    assert _unit().decide(vetoed, "404 Not Found", reason="gone") == (False, "veto")
    assert _unit().decide(vetoed=lambda: False) == (True, "veto")
    assert seen == [("404 Not Found", "gone")]


@pytest.mark.parametrize(
    ("forced", "veto", "decision"),
    [
        (None, None, (True, "ended")),
        (None, True, (False, "veto")),
        ("commit", True, (True, "force_commit")),
        ("rollback", None, (False, "force_rollback")),
        ("rollback", False, (False, "force_rollback")),
    ],
)
def test_decide_returns_a_forced_outcome_else_the_vetos(
    forced: Any, veto: bool | None, decision: tuple[bool, str]
) -> None:
    unit = _unit()
    if forced is not None:
        unit.force(forced)
    assert (unit.decide() if veto is None else unit.decide(lambda: veto)) == decision
