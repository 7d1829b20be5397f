"""gunicorn settings every test server gets: a worker says when it can serve.

gunicorn forks a worker before the worker imports the application, so a
forked worker is not yet a ready one; the tests wait for this line instead.
"""

from typing import Any


def post_worker_init(worker: Any) -> None:
    worker.log.info("wsgi_sqla tests: worker %d is ready", worker.pid)
