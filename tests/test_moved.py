"""The 0.1 import paths keep working, with a DeprecationWarning saying where to go."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import wsgi_sqla

MOVED = [
    pytest.param("wsgi_sqla.unit", name, id=f"unit.{name}")
    for name in (
        "StaleSessionWarning",
        "UnitOfWork",
        "after_commit",
        "current_unit",
        "force_commit",
        "force_rollback",
    )
] + [
    pytest.param("wsgi_sqla.middleware", "SessionMiddleware", id="middleware.SessionMiddleware"),
    pytest.param("wsgi_sqla.middleware", "CommitVeto", id="middleware.CommitVeto"),
    pytest.param("wsgi_sqla.middleware", "default_commit_veto", id="middleware.default_veto"),
    pytest.param("wsgi_sqla.blocks", "transaction", id="blocks.transaction"),
    pytest.param("wsgi_sqla.retry", "is_transient_error", id="retry.is_transient_error"),
    pytest.param("wsgi_sqla.retry", "report_exception", id="retry.report_exception"),
    pytest.param("wsgi_sqla.retry", "report_flask_exceptions", id="retry.report_flask"),
    pytest.param("wsgi_sqla.retry", "report_bottle_exceptions", id="retry.report_bottle"),
    pytest.param("wsgi_sqla.retry", "POSTGRESQL_TRANSIENT_SQLSTATES", id="retry.pg_states"),
    pytest.param("wsgi_sqla.retry", "MYSQL_TRANSIENT_ERRORS", id="retry.mysql_errors"),
    pytest.param("wsgi_sqla.fork", "fork_safe", id="fork.fork_safe"),
    pytest.param("wsgi_sqla.model", "ActiveRecordMixin", id="model.ActiveRecordMixin"),
    pytest.param("wsgi_sqla.model", "declarative_base", id="model.declarative_base"),
]


@pytest.mark.parametrize(("old", "name"), MOVED)
def test_old_import_path_gives_the_public_object_with_a_deprecation_warning(
    old: str, name: str
) -> None:
    module = importlib.import_module(old)
    with pytest.warns(
        DeprecationWarning, match=f"{old}.{name} is deprecated.*import it from wsgi_sqla"
    ):
        moved = getattr(module, name)
    assert moved is getattr(wsgi_sqla, name)


@pytest.mark.parametrize(
    ("old", "name"),
    [
        pytest.param("wsgi_sqla.retry", "RetryPolicy", id="RetryPolicy"),
        pytest.param("wsgi_sqla.retry", "DEFAULT_RETRY_BODY_LIMIT", id="DEFAULT_RETRY_BODY_LIMIT"),
    ],
)
def test_old_name_that_became_internal_warns_that_it_will_be_removed(old: str, name: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match="internal now and will be removed"):
        getattr(module, name)


def test_a_name_the_old_module_never_had_is_an_attribute_error() -> None:
    module = importlib.import_module("wsgi_sqla.unit")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        module.nothing  # noqa: B018


def test_the_package_exports_exactly_its_public_surface() -> None:
    public = {
        name
        for name, value in vars(wsgi_sqla).items()
        if name.isidentifier() and not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(wsgi_sqla.__all__)
