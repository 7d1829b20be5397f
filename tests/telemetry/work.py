"""What the views and blocks of the telemetry tests do, one function per kind of unit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from support import Boom, Models

__all__ = ["forcing", "pledging", "raising", "save", "swallowing"]


def save(models: Models, name: str = "ann") -> Callable[[], None]:
    return lambda: models.User(name=name).save()


def raising(models: Models) -> Callable[[], None]:
    def work() -> None:
        models.User(name="ann").save()
        raise Boom("the view failed")

    return work


def swallowing(models: Models) -> Callable[[], None]:
    """Saves ann, then inserts her again and swallows the database's refusal."""

    def work() -> None:
        models.User(name="ann").save()
        with contextlib.suppress(IntegrityError):
            models.User.__session__.execute(insert(models.User).values(name="ann"))

    return work


def forcing(models: Models, force: Callable[[], None]) -> Callable[[], None]:
    def work() -> None:
        models.User(name="ann").save()
        force()

    return work


def pledging(models: Models) -> Callable[[], None]:
    """A pledge to a user who does not exist: the deferred key fails at COMMIT."""
    return lambda: models.Pledge(user_id=999).save()
