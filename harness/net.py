"""Free ports on 127.0.0.1, and waiting until something is ready."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

__all__ = ["Unavailable", "free_port", "until", "wait_until"]


class Unavailable(Exception):
    """A binary, user or service a harness part needs is not here (the message says what)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    For servers that cannot bind port 0 and report theirs; another process may
    take the port before it is used, so callers that can retry do.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def until(check: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds (polled every ``interval``)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait until ``check()`` is true; ``RuntimeError`` naming ``what`` after ``timeout`` s."""
    if not until(check, timeout):
        raise RuntimeError(f"{what} did not happen within {timeout} s")
