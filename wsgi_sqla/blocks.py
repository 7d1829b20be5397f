"""Deprecated since 0.2: import these names from ``wsgi_sqla`` instead."""

from ._moved import forward

__getattr__ = forward(
    "wsgi_sqla.blocks",
    {
        "transaction": "wsgi_sqla._transaction",
    },
)
