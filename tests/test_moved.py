"""The 0.1 import paths keep working, with a DeprecationWarning saying where to go."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import wsgi_sqla

OLD_PATHS = {
    "wsgi_sqla.unit": (
        "StaleSessionWarning",
        "UnitOfWork",
        "after_commit",
        "current_unit",
        "force_commit",
        "force_rollback",
    ),
    "wsgi_sqla.middleware": ("CommitVeto", "SessionMiddleware", "default_commit_veto"),
    "wsgi_sqla.blocks": ("transaction",),
    "wsgi_sqla.retry": (
        "MYSQL_TRANSIENT_ERRORS",
        "POSTGRESQL_TRANSIENT_SQLSTATES",
        "is_transient_error",
        "report_bottle_exceptions",
        "report_exception",
        "report_flask_exceptions",
    ),
    "wsgi_sqla.fork": ("fork_safe",),
    "wsgi_sqla.model": ("ActiveRecordMixin", "declarative_base"),
}
MOVED = [
    pytest.param(old, name, id=f"{old.removeprefix('wsgi_sqla.')}.{name}")
    for old, names in OLD_PATHS.items()
    for name in names
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
