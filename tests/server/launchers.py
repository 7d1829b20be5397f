"""The WSGI servers of the end-to-end tests, launched by harness/ (:mod:`harness.launchers`).

:func:`launch` starts gunicorn, uWSGI, waitress or mod_wsgi serving an
application of this folder; :func:`sendfile_calls` traces a server's
``sendfile`` calls. A server or tool that is not installed skips the test on
a laptop and fails it in CI (``support.missing``), naming what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from support import missing

from harness import launchers
from harness.launchers import SERVER_NAMES
from harness.net import Unavailable

from .support import HERE, Gunicorn

__all__ = ["SERVER_NAMES", "launch", "sendfile_calls"]


def launch(name: str, app: str, **options: Any) -> Gunicorn:
    """:func:`harness.launchers.launch`, with this folder on the servers' path."""
    try:
        return launchers.launch(name, app, paths=[HERE], **options)
    except Unavailable as exc:
        missing(str(exc))


@contextmanager
def sendfile_calls(server: Gunicorn) -> Iterator[list[int]]:
    """Trace every process of ``server`` during the block; the list gets sendfile results."""
    with ExitStack() as stack:
        try:
            calls = stack.enter_context(launchers.sendfile_calls(server))
        except Unavailable as exc:
            missing(str(exc))
        yield calls
