"""wsgi_sqla: one web request, one SQLAlchemy unit of work.

* :class:`SessionMiddleware` commits every scoped session when the response
  status is below 400 and rolls back otherwise, before the client is told
  anything, and always cleans up;
* :func:`declarative_base` / :class:`ActiveRecordMixin` give models
  ``save()``, ``update()`` and ``delete()`` that flush but never commit;
* :func:`force_commit` / :func:`force_rollback` override the decision for
  one request, :func:`after_commit` runs code only once the data is there;
* :class:`transaction` gives scripts and CLI commands the same unit of work
  (``wsgi_sqla.celery.SessionTask`` does for Celery tasks);
* :func:`isolated` and :func:`reset_schema` isolate tests from each other
  (the pytest plugin in :mod:`wsgi_sqla.pytest_plugin` wraps the first);
* ``SessionMiddleware(..., retries=N)`` runs a request again after a
  transient database error (:mod:`wsgi_sqla.retry`), and :func:`fork_safe`
  keeps pre-forking servers from sharing connections between workers.
"""

from .blocks import transaction
from .fork import fork_safe
from .middleware import CommitVeto, SessionMiddleware, default_commit_veto
from .model import ActiveRecordMixin, declarative_base
from .retry import (
    is_transient_error,
    report_bottle_exceptions,
    report_exception,
    report_flask_exceptions,
)
from .testing import isolated, reset_schema
from .unit import (
    StaleSessionWarning,
    UnitOfWork,
    after_commit,
    current_unit,
    force_commit,
    force_rollback,
)

__all__ = [
    "ActiveRecordMixin",
    "CommitVeto",
    "SessionMiddleware",
    "StaleSessionWarning",
    "UnitOfWork",
    "after_commit",
    "current_unit",
    "declarative_base",
    "default_commit_veto",
    "force_commit",
    "force_rollback",
    "fork_safe",
    "is_transient_error",
    "isolated",
    "report_bottle_exceptions",
    "report_exception",
    "report_flask_exceptions",
    "reset_schema",
    "transaction",
]
