"""gunicorn settings for gevent workers with ``--preload``.

With ``--preload`` the master imports the application before it forks, and
gevent's worker patches the standard library only after the fork: objects
created at import (``scoped_session``'s ``threading.local``, the pool's
locks) would be real thread primitives, shared by every greenlet of a
worker. Patching here, before anything else is imported, avoids that.
"""

from typing import Any

from gevent import monkey

monkey.patch_all()


def post_worker_init(worker: Any) -> None:
    # As in harness/ready_conf.py: gunicorn takes one configuration file.
    worker.log.info("wsgi_sqla tests: worker %d is ready", worker.pid)
