"""wsgi_sqla: one web request, one SQLAlchemy unit of work.

* :class:`SessionMiddleware` commits every scoped session when the response
  status is below 400 and rolls back otherwise, before the client is told
  anything, and always cleans up;
* :func:`declarative_base` / :class:`ActiveRecordMixin` give models
  ``save()``, ``update()`` and ``delete()`` that flush but never commit;
* :func:`force_commit` / :func:`force_rollback` override the decision for
  one request, :func:`after_commit` runs code only once the data is there;
* :class:`transaction` gives scripts and CLI commands the same unit of work
  (:class:`wsgi_sqla.celery.SessionTask` does for Celery tasks);
* ``SessionMiddleware(..., retry=Retry(N))`` runs a request again after a
  transient database error (:func:`is_transient_error`), and
  :func:`fork_safe` keeps pre-forking servers from sharing connections
  between workers;
* ``SessionMiddleware(..., idempotency=IdempotencyKeys())`` runs a POST
  or PATCH with an ``Idempotency-Key`` at most once per client and key, its
  response recorded with its writes and replayed to repeats
  (:func:`expire_idempotency_keys` deletes old keys);
* :mod:`wsgi_sqla.testing` isolates tests from each other (the pytest
  plugin in :mod:`wsgi_sqla.pytest_plugin` wraps it); :func:`isolated` and
  :func:`reset_schema` are also importable from here.

This module is the whole public surface; the modules whose names start with
an underscore are the implementation.
"""

from importlib import metadata as _metadata

from ._fork import fork_safe
from ._frameworks import report_bottle_exceptions, report_flask_exceptions
from ._idempotency import IdempotencyKeys, expire_idempotency_keys
from ._in_doubt import NotCommittedError, resolve_in_doubt
from ._middleware import CommitVeto, SessionMiddleware, default_commit_veto
from ._model import ActiveRecordMixin, declarative_base
from ._pooling import TransactionPoolerWarning, transaction_pooled
from ._rejected import CommitInDoubtError, RejectedWorkError
from ._replicas import (
    POSITION_COOKIE,
    POSITION_HEADER,
    Replicas,
    ReplicaWriteError,
    committed_positions,
    default_replica_reads,
    use_primary,
)
from ._retry import Retry, report_exception
from ._transaction import transaction
from ._transient import MYSQL_TRANSIENT_ERRORS, POSTGRESQL_TRANSIENT_SQLSTATES, is_transient_error
from ._unit import (
    StaleSessionWarning,
    UnitOfWork,
    after_commit,
    current_unit,
    force_commit,
    force_rollback,
)
from .testing import isolated, reset_schema

__all__ = [
    "MYSQL_TRANSIENT_ERRORS",
    "POSITION_COOKIE",
    "POSITION_HEADER",
    "POSTGRESQL_TRANSIENT_SQLSTATES",
    "ActiveRecordMixin",
    "CommitInDoubtError",
    "CommitVeto",
    "IdempotencyKeys",
    "NotCommittedError",
    "RejectedWorkError",
    "ReplicaWriteError",
    "Replicas",
    "Retry",
    "SessionMiddleware",
    "StaleSessionWarning",
    "TransactionPoolerWarning",
    "UnitOfWork",
    "after_commit",
    "committed_positions",
    "current_unit",
    "declarative_base",
    "default_commit_veto",
    "default_replica_reads",
    "expire_idempotency_keys",
    "force_commit",
    "force_rollback",
    "fork_safe",
    "is_transient_error",
    "isolated",
    "report_bottle_exceptions",
    "report_exception",
    "report_flask_exceptions",
    "reset_schema",
    "resolve_in_doubt",
    "transaction",
    "transaction_pooled",
    "use_primary",
]

try:
    #: The installed distribution's version (from its metadata, so it is written once).
    __version__: str = _metadata.version("wsgi_sqla")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
