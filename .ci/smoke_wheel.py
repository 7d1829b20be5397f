"""Smoke test of an installed wheel: run by .ci/run with a fresh venv's python, from a temp dir.

It must import the installed package, never the checkout, and show that the
promises hold there: a status below 400 commits, 400 and above rolls back,
``transaction()`` commits, the pytest plugin's entry point is registered and
``py.typed`` ships.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import wsgi_sqla
from wsgi_sqla import ActiveRecordMixin, SessionMiddleware, transaction

checkout = Path(sys.argv[1]).resolve()
package = Path(wsgi_sqla.__file__).resolve().parent
assert checkout not in package.parents, f"imported the checkout, not the wheel: {package}"
assert (package / "py.typed").is_file(), "py.typed is missing from the wheel"
version = importlib.metadata.version("wsgi_sqla")
assert version == sys.argv[2], f"installed {version}, expected {sys.argv[2]}"
plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
assert plugins.get("wsgi_sqla") == "wsgi_sqla.pytest_plugin", plugins

engine = create_engine("sqlite:///smoke.sqlite3")
db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))


class Base(ActiveRecordMixin, DeclarativeBase):
    __session__ = db


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


Base.metadata.create_all(engine)


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
    Item(name=environ["PATH_INFO"].strip("/")).save()
    status = "201 Created" if environ["PATH_INFO"] == "/kept" else "400 Bad Request"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


def server_start_response(status: str, headers: list[tuple[str, str]], *exc_info: object) -> Any:
    return lambda data: None


wrapped = SessionMiddleware(app, db)
for path in ("/kept", "/dropped"):
    body = wrapped({"PATH_INFO": path, "REQUEST_METHOD": "POST"}, server_start_response)
    b"".join(body)
    getattr(body, "close", lambda: None)()

with transaction(db):
    Item(name="script").save()

with engine.connect() as connection:
    names = connection.scalars(select(Item.name).order_by(Item.id)).all()
assert names == ["kept", "script"], names
print(f"ci: wheel smoke test passed: wsgi_sqla {version} from {package}")
