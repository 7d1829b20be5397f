"""HTTP facts the package relies on, each written once.

A response "succeeded" when its status is below 400: the middleware commits
such a request by default (:func:`~wsgi_sqla.default_commit_veto`), and read
replicas hand out a position token only with one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["default_commit_veto", "succeeded"]


def succeeded(status: str) -> bool:
    """Whether a WSGI status line (``"201 Created"``) is below 400."""
    return status[:1] in ("1", "2", "3")


def default_commit_veto(
    environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]
) -> bool:
    """Veto (roll back) every response whose status code is 400 or above."""
    return not succeeded(status)
