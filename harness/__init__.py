"""Real things for the tests and the benchmarks to start and stop: one harness for both.

Not installed with the package; importable from the repository root (pytest's
``pythonpath`` is ``.``, and ``python -m bench`` runs from the root).

* :mod:`harness.net`: free ports, waiting until something is ready;
* :mod:`harness.proxy`: a TCP proxy that drops its connections on command,
  or cuts one just after a COMMIT reached the database;
* :mod:`harness.pgbouncer`: a throwaway PgBouncer of our own;
* :mod:`harness.clusters`: throwaway PostgreSQL and MariaDB primaries with
  streaming replicas;
* :mod:`harness.wrk`: running wrk and reading what it prints.

Everything started here listens on 127.0.0.1 and is stopped by its pid; the
shared database servers are never touched.
"""
