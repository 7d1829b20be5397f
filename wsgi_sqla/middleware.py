"""Deprecated since 0.2: import these names from ``wsgi_sqla`` instead."""

from ._moved import forward

__getattr__ = forward(
    "wsgi_sqla.middleware",
    {
        "CommitVeto": "wsgi_sqla._middleware",
        "SessionMiddleware": "wsgi_sqla._middleware",
        "default_commit_veto": "wsgi_sqla._middleware",
    },
)
