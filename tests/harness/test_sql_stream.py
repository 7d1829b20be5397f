"""harness.proxy.SqlStream: a client's bytes split into messages, wherever the chunks break."""

from __future__ import annotations

import struct

import pytest

from harness.proxy import Message, SqlStream


def pg_startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0postgres\0\0"
    return struct.pack("!i", 4 + len(body)) + body


def pg_ssl_request() -> bytes:
    return struct.pack("!ii", 8, 80877103)


def pg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


def mysql_query(sql: str, sequence: int = 0) -> bytes:
    payload = b"\x03" + sql.encode()
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


PG_SESSION = (
    pg_ssl_request()
    + pg_startup()
    + pg(b"Q", b"BEGIN\0")
    + pg(b"P", b"stmt\0SELECT 1\0\0\0")
    + pg(b"S", b"")
    + pg(b"Q", b"COMMIT\0")
)
PG_MESSAGES = [("", False), ("", False), ("BEGIN", True), ("SELECT 1", False), ("", False)]
PG_MESSAGES += [("COMMIT", True)]
MYSQL_SESSION = mysql_query("SET autocommit=0") + b"\x01\x00\x00\x00\x0e" + mysql_query("COMMIT")
MYSQL_MESSAGES = [("SET autocommit=0", True), ("", False), ("COMMIT", True)]


@pytest.mark.parametrize(
    ("protocol", "stream", "expected"),
    [
        pytest.param("postgresql", PG_SESSION, PG_MESSAGES, id="postgresql"),
        pytest.param("mariadb", MYSQL_SESSION, MYSQL_MESSAGES, id="mariadb"),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 16], ids=lambda n: f"chunks-of-{n}")
def test_messages_and_their_ends_are_found_across_any_chunking(
    protocol: str, stream: bytes, expected: list[tuple[str, bool]], chunk: int
) -> None:
    reader = SqlStream(protocol)
    found: list[Message] = []
    spans: list[tuple[int, int]] = []  # each message's start and end in the whole stream
    for offset in range(0, len(stream), chunk):
        for message in reader.feed(stream[offset : offset + chunk]):
            found.append(message)
            spans.append((offset + message.start, offset + message.end))
    assert [(m.sql, m.runs) for m in found] == expected
    # Back to back from the first byte to the last: each starts where the one before ended.
    assert [start for start, _ in spans] == [0, *(end for _, end in spans[:-1])]
    assert spans[-1][1] == len(stream)


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="no message parser for 'oracle'"):
        SqlStream("oracle")
