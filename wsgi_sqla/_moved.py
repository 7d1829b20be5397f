"""Import paths that moved: the old public modules warn and forward.

wsgi_sqla 0.2 made every implementation module private by file name and
``wsgi_sqla`` itself the whole public surface. The 0.1 module paths
(``wsgi_sqla.unit``, ``wsgi_sqla.middleware``, ...) keep working for a
while: each name they exported is looked up in its new home on first use,
with a :class:`DeprecationWarning` that says where to import it from.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

__all__ = ["forward"]


def forward(old_module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old_module``: ``names`` maps each name to its new module."""

    def __getattr__(name: str) -> object:
        new_module = names.get(name)
        if new_module is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(new_module), name)
        if name in importlib.import_module("wsgi_sqla").__all__:
            advice = "import it from wsgi_sqla"
        else:
            advice = "it is internal now and will be removed"
        warnings.warn(
            f"{old_module}.{name} is deprecated since wsgi_sqla 0.2: {advice}",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
