"""Deprecated since 0.2: import these names from ``wsgi_sqla`` instead."""

from collections.abc import Callable

from ._moved import forward

__getattr__: Callable[[str], object] = forward(
    "wsgi_sqla.retry",
    {
        "DEFAULT_RETRY_BODY_LIMIT": "wsgi_sqla._retry",
        "MYSQL_TRANSIENT_ERRORS": "wsgi_sqla._transient",
        "POSTGRESQL_TRANSIENT_SQLSTATES": "wsgi_sqla._transient",
        "is_transient_error": "wsgi_sqla._transient",
        "report_bottle_exceptions": "wsgi_sqla._frameworks",
        "report_exception": "wsgi_sqla._retry",
        "report_flask_exceptions": "wsgi_sqla._frameworks",
    },
)
