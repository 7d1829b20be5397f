"""The application that the soak, fault and fork tests run under gunicorn.

Plain WSGI under :class:`~wsgi_sqla.SessionMiddleware`, so that every way of
answering (status, raising, streaming, committing late) is spelled out here
rather than hidden in a framework. Every writing endpoint stores a row
whose ``key`` comes from the query string, so the test can later compare
the database with what its client saw, request by request.

``DATABASE_URL`` says where the database is; ``SOAK_RETRIES`` turns on the
middleware's retries; ``DATABASE_POOLING=transaction`` says the URL points at
a transaction-pooling PgBouncer (as in the examples). Tables are created by
the test, not here: workers that import this module at the same moment would
race to create them. Importing it does touch the database (a start-up check), so that under
``gunicorn --preload`` the master holds a pooled connection when it forks.

Endpoints (``K`` is the ``key`` query parameter):

=====================  ============================================================
``POST /write``        insert K, answer 201
``POST /reject``       insert K and flush, answer 422
``POST /raise``        insert K and flush, then raise (the server answers 500)
``POST /commit-fail``  insert K and a row whose deferred foreign key dangles:
                       every flush passes, COMMIT fails (PostgreSQL)
``POST /stream``       insert K, answer 200 with ``chunks`` chunks of ``size``
                       bytes; after the first chunk insert ``K/s``, which is
                       committed only if the whole body was sent
``POST /bump``         SERIALIZABLE: read the counter, write it back plus one,
                       insert K; concurrent bumps conflict
``POST /sleep``        insert K and flush, then sleep ``seconds`` in the
                       database (the fault tests kill that connection)
``GET /backend``       this worker's pid, its database connection's id and the
                       local address of the socket it talks to the database on
``GET /together``      wait until ``n`` requests of ``group`` are in this worker,
                       then say whether this request still has its own Session
``GET /download``      insert K, answer 200 with the file named by ``SOAK_DOWNLOAD``
                       through the server's ``wsgi.file_wrapper``, without a
                       Content-Length (a server that recognises its wrapper may
                       add one)
``GET /ping``          no database at all
``GET /diag``          pid, connections checked out, live objects, RSS
=====================  ============================================================
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import ForeignKey, Integer, String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.apps import served_database
from wsgi_sqla import Retry, SessionMiddleware

DATABASE_URL = os.environ["DATABASE_URL"]
RETRIES = int(os.environ.get("SOAK_RETRIES", "0"))

engine, db = served_database(
    pool_pre_ping=True,
    connect_args=(
        {"application_name": "wsgi_sqla_soak"} if DATABASE_URL.startswith("postgresql") else {}
    ),
)
DIALECT = engine.dialect.name


# MariaDB has no deferrable constraints: there the key is checked at once.
_DEFERRED: dict[str, Any] = (
    {} if DIALECT in ("mysql", "mariadb") else {"deferrable": True, "initially": "DEFERRED"}
)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "soak_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    tag: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(16))


class Claim(Base):
    """A row whose foreign key is checked only at COMMIT on PostgreSQL."""

    __tablename__ = "soak_claims"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("soak_items.id", **_DEFERRED))


class Counter(Base):
    __tablename__ = "soak_counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


# The start-up check: under --preload this leaves a connection in the master's pool.
with engine.connect() as _connection:
    _connection.execute(select(1))

_Start = Callable[..., Any]
_CHUNK_CACHE: dict[int, bytes] = {}
_barriers: dict[str, int] = {}
_barrier_lock = threading.Lock()


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: _Start, status: str, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _add(key: str, kind: str) -> Item:
    item = Item(tag=key, kind=kind)
    db.add(item)
    db.flush()
    return item


def write(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "write")
    return _json(start_response, "201 Created", {"key": p["key"]})


def reject(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "reject")
    return _json(start_response, "422 Unprocessable Entity", {"error": "rejected"})


def fail(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "raise")
    raise RuntimeError("this view fails after writing")


def commit_fail(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "commit-fail")
    db.add(Claim(item_id=-1))
    db.flush()
    return _json(start_response, "201 Created", {"key": p["key"]})


def stream(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    key, chunks, size = p["key"], int(p.get("chunks", "8")), int(p.get("size", "1024"))
    _add(key, "stream")
    chunk = _CHUNK_CACHE.get(size)
    if chunk is None:
        chunk = _CHUNK_CACHE[size] = b"x" * size
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body() -> Iterator[bytes]:
        yield chunk
        _add(f"{key}/s", "streamed")  # work done while streaming: kept only if it all went out
        for _ in range(chunks - 1):
            yield chunk

    return body()


def bump(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    db.connection(execution_options={"isolation_level": "SERIALIZABLE"})
    counter = db.get(Counter, 1)
    assert counter is not None
    counter.value += 1
    _add(p["key"], "bump")
    return _json(start_response, "201 Created", {"value": counter.value})


def sleep(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "sleep")
    seconds = float(p.get("seconds", "20"))
    if DIALECT == "postgresql":
        db.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    else:
        db.execute(text("SELECT SLEEP(:s)"), {"s": seconds})
    return _json(start_response, "201 Created", {"key": p["key"]})


def backend(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    query = "SELECT pg_backend_pid()" if DIALECT == "postgresql" else "SELECT CONNECTION_ID()"
    backend_id = db.execute(text(query)).scalar_one()
    driver: Any = db.connection().connection.driver_connection
    # Behind a pooler the backend changes with each transaction; the client socket does not.
    fileno = driver.fileno() if hasattr(driver, "fileno") else driver._sock.fileno()
    with socket.socket(fileno=os.dup(fileno)) as sock:
        host, port = sock.getsockname()[:2]
    local = f"{host}:{port}"
    answer = {"pid": os.getpid(), "backend": backend_id, "local": local}
    return _json(start_response, "200 OK", answer)


def together(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    session = db()  # the Session this request got from the scoped registry
    session.info.setdefault("keys", []).append(p["key"])
    group, wanted = p["group"], int(p.get("n", "2"))
    with _barrier_lock:
        _barriers[group] = _barriers.get(group, 0) + 1
    deadline = time.monotonic() + 10
    while _barriers[group] < wanted and time.monotonic() < deadline:
        time.sleep(0.005)  # cooperative under gevent
    # With sessions shared between concurrent requests, another request would have
    # replaced (and rolled back) this one's Session in the registry by now.
    answer = {"keys": session.info["keys"], "same_session": db() is session, "pid": os.getpid()}
    return _json(start_response, "200 OK", answer)


def download(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    _add(p["key"], "download")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(os.environ["SOAK_DOWNLOAD"], "rb"), 65536)


def ping(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    return _json(start_response, "200 OK", {"pid": os.getpid()})


def diag(environ: dict[str, Any], start_response: _Start, p: dict[str, str]) -> Any:
    gc.collect()
    with open(f"/proc/{os.getpid()}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return _json(
        start_response,
        "200 OK",
        {
            "pid": os.getpid(),
            "checked_out": engine.pool.checkedout(),  # type: ignore[attr-defined]
            "objects": len(gc.get_objects()),
            "rss_kb": rss,
        },
    )


ROUTES: dict[tuple[str, str], Callable[..., Any]] = {
    ("POST", "/write"): write,
    ("POST", "/reject"): reject,
    ("POST", "/raise"): fail,
    ("POST", "/commit-fail"): commit_fail,
    ("POST", "/stream"): stream,
    ("POST", "/bump"): bump,
    ("POST", "/sleep"): sleep,
    ("GET", "/backend"): backend,
    ("GET", "/together"): together,
    ("GET", "/download"): download,
    ("GET", "/ping"): ping,
    ("GET", "/diag"): diag,
}


def soak_app(environ: dict[str, Any], start_response: _Start) -> Any:
    view = ROUTES.get((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
    if view is None:
        return _json(start_response, "404 Not Found", {"error": "no such endpoint"})
    return view(environ, start_response, _params(environ))


app = SessionMiddleware(soak_app, db, retry=Retry(RETRIES))
