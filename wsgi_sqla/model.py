"""Deprecated since 0.2: import these names from ``wsgi_sqla`` instead."""

from ._moved import forward

__getattr__ = forward(
    "wsgi_sqla.model",
    {
        "ActiveRecordMixin": "wsgi_sqla._model",
        "declarative_base": "wsgi_sqla._model",
    },
)
