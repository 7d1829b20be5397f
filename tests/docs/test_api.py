"""``wsgi_sqla`` is the whole public surface: ``__all__`` lists exactly what it exports."""

from __future__ import annotations

from types import ModuleType

import wsgi_sqla


def test_the_package_exports_exactly_its_public_surface() -> None:
    public = {
        name
        for name, value in vars(wsgi_sqla).items()
        if name.isidentifier() and not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(wsgi_sqla.__all__)
