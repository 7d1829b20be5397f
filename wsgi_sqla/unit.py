"""Deprecated since 0.2: import these names from ``wsgi_sqla`` instead."""

from ._moved import forward

__getattr__ = forward(
    "wsgi_sqla.unit",
    {
        "StaleSessionWarning": "wsgi_sqla._unit",
        "UnitOfWork": "wsgi_sqla._unit",
        "after_commit": "wsgi_sqla._unit",
        "current_unit": "wsgi_sqla._unit",
        "force_commit": "wsgi_sqla._unit",
        "force_rollback": "wsgi_sqla._unit",
    },
)
