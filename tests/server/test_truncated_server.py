"""A real client that hangs up mid-body, a real gunicorn, a real database.

The client announces ``Content-Length: 11``, sends ``amount=10`` (9 bytes)
and then shuts down its write side (it still reads the answer) or closes
the connection. gunicorn hands the view the 9 bytes, which parse as a
perfectly good ``amount=10``; the view saves it and answers 201. Through
:class:`~wsgi_sqla.SessionMiddleware` nothing may be committed, the client
(if it still listens) gets 400, and the worker logs one warning. The
database is read through the test's own connection. The views are in
truncated_app.py, in Flask and in plain WSGI.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import database_url

from .support import Gunicorn, Serve, app_tables, until

APP = Path(__file__).with_name("truncated_app.py")
SERVED = {"flask": "truncated_app:flask_app", "plain": "truncated_app:plain_app"}
WARNING = "POST /pledges: the request body ended after 9 of 11 bytes"


@pytest.fixture
def database(db_name: str, tmp_path: Path) -> Iterator[str]:
    url = database_url(db_name, tmp_path)
    with app_tables(APP, url):
        yield url


def pledges(url: str) -> list[int]:
    """The committed amounts, read through a connection of the test's own."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT amount FROM truncated_pledges ORDER BY id"))
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def post(server: Gunicorn, body: bytes, announced: int, hang_up: str) -> bytes | None:
    """POST ``body`` under ``Content-Length: announced`` over a raw socket, then hang up.

    ``hang_up="shutdown"`` closes the write side only and returns what the
    server answered; ``"close"`` closes the connection and returns ``None``.
    """
    head = (
        "POST /pledges HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {announced}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        if hang_up == "close":
            return None
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_line(reply: bytes | None) -> bytes:
    assert reply, "the server answered nothing"
    return reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("hang_up", ["shutdown", "close"])
@pytest.mark.parametrize("framework", ["flask", "plain"])
def test_a_client_that_hangs_up_mid_body_commits_nothing(
    gunicorn: Serve, database: str, framework: str, hang_up: str
) -> None:
    server = gunicorn(SERVED[framework], database=database)
    reply = post(server, b"amount=10", 11, hang_up)
    # Wait until the request was handled: the warning, or (without the rule) its row.
    assert until(lambda: WARNING in server.log_text() or bool(pledges(database)))
    assert pledges(database) == []
    if reply is not None:
        assert status_line(reply) == b"HTTP/1.1 400 Bad Request"
        assert reply.endswith(b"the request body ended before its Content-Length\n")
    assert server.log_text().count(WARNING) == 1


@pytest.mark.parametrize("framework", ["flask", "plain"])
def test_a_client_that_sends_the_whole_body_and_hangs_up_commits(
    gunicorn: Serve, database: str, framework: str
) -> None:
    server = gunicorn(SERVED[framework], database=database)
    reply = post(server, b"amount=100", 10, "shutdown")
    assert status_line(reply).startswith(b"HTTP/1.1 201 ")
    assert pledges(database) == [100]
    assert "the request body ended" not in server.log_text()
