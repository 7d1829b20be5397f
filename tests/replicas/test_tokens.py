"""Position tokens, in process: encoding, signing, parsing, expiry, carriers (no database)."""

from __future__ import annotations

import time

import pytest

from wsgi_sqla import POSITION_COOKIE, POSITION_HEADER
from wsgi_sqla._replicas.dialects import MariaDB, PostgreSQL
from wsgi_sqla._replicas.tokens import MAX_TOKEN_LENGTH, Tokens, cookie_value

SECRET = b"a test secret of enough length"
POSITION = "16/B374D848"
HEADER_KEY = "HTTP_WSGI_SQLA_POSITION"


def tokens(secret: bytes | None = SECRET, max_age: int = 30, primaries: int = 1) -> Tokens:
    return Tokens(
        secret, max_age, [PostgreSQL().valid] * primaries, [f"p{i}" for i in range(primaries)]
    )


def test_a_token_reads_back_as_its_positions() -> None:
    signed = tokens()
    token = signed.parse(signed.encode((POSITION,)))
    assert token is not None
    assert token.positions == (POSITION,)
    assert abs(token.issued - time.time()) <= 1


def test_an_unsigned_token_has_the_dash_signature_and_reads_back() -> None:
    unsigned = tokens(secret=None)
    value = unsigned.encode((POSITION,))
    assert value.endswith(".-")
    assert unsigned.parse(value) is not None
    assert tokens().parse(value) is None  # a signing app ignores it


def test_a_token_signed_with_another_secret_is_ignored() -> None:
    other = tokens(secret=b"another secret of enough length")
    assert tokens().parse(other.encode((POSITION,))) is None


def test_a_primary_that_wrote_nothing_has_an_empty_position() -> None:
    two = tokens(primaries=2)
    token = two.parse(two.encode(("", POSITION)))
    assert token is not None and token.positions == ("", POSITION)
    assert two.parse(two.encode(("", ""))) is None


FORGED = [
    pytest.param("garbage", id="garbage"),
    pytest.param("", id="empty"),
    pytest.param("1." * 300, id="huge"),
    pytest.param("2.{now}.{position}.{sig}", id="unknown-version"),
    pytest.param("1.{now}.{position}.0123456789abcdef0123456789abcdef", id="wrong-signature"),
    pytest.param("1.{now}.{position}.-", id="unsigned"),
    pytest.param("1.{now}.{position}", id="no-signature-field"),
    pytest.param("1.{future}.{position}.{sig}", id="issued-in-the-future"),
    pytest.param("1.{expired}.{position}.{sig}", id="expired"),
    pytest.param("1.{now}.not-a-position.{sig}", id="malformed-position"),
    pytest.param("1.{now}.{position}~{position}.{sig}", id="too-many-positions"),
    pytest.param("1.{now}..{sig}", id="no-position"),
    pytest.param("1.-5.{position}.{sig}", id="negative-time"),
    pytest.param("1.{now}.{position}.{sig}{sig}", id="long-signature"),
]


@pytest.mark.parametrize("template", FORGED)
@pytest.mark.parametrize("carrier", ["cookie", "header"])
def test_a_forged_or_malformed_token_is_ignored(template: str, carrier: str) -> None:
    signed = tokens()
    _version, _issued, position, sig = signed.encode((POSITION,)).split(".")
    now = int(time.time())
    value = template.format(
        now=now, future=now + 3600, expired=now - 3600, position=position, sig=sig
    )
    if carrier == "cookie":
        environ = {"HTTP_COOKIE": f"other=1; {POSITION_COOKIE}={value}"}
    else:
        environ = {HEADER_KEY: value}
    assert signed.read(environ) is None


def test_a_token_is_read_from_the_header_first_then_the_cookie() -> None:
    signed = tokens()
    in_header = signed.encode((POSITION,))
    in_cookie = signed.encode(("0/1",))
    both = {HEADER_KEY: in_header, "HTTP_COOKIE": f"{POSITION_COOKIE}={in_cookie}"}
    found = signed.read(both)
    assert found is not None and found.positions == (POSITION,)
    found = signed.read({"HTTP_COOKIE": f'a=b; {POSITION_COOKIE}="{in_cookie}"; c=d'})
    assert found is not None and found.positions == ("0/1",)
    assert signed.read({}) is None
    assert signed.read({"HTTP_COOKIE": "a=b"}) is None


def test_the_header_key_matches_the_header_name() -> None:
    assert "HTTP_" + POSITION_HEADER.upper().replace("-", "_") == HEADER_KEY


def test_a_token_expires_after_max_age() -> None:
    short = tokens(max_age=10)
    assert short.parse(short.encode((POSITION,), now=time.time() - 9)) is not None
    assert short.parse(short.encode((POSITION,), now=time.time() - 11)) is None


def test_a_token_longer_than_the_limit_is_not_read() -> None:
    signed = tokens()
    assert signed.parse("1." + "0" * MAX_TOKEN_LENGTH) is None


def test_the_cookie_is_http_only_and_same_site() -> None:
    assert Tokens.cookie("v", 30) == (
        f"{POSITION_COOKIE}=v; Max-Age=30; Path=/; HttpOnly; SameSite=Lax"
    )
    assert cookie_value(f' x=1 ;{POSITION_COOKIE}="v"') == "v"
    assert cookie_value("x=1") is None


def test_positions_carried_by_a_task_are_checked_per_primary() -> None:
    gtids = Tokens(None, 30, [PostgreSQL().valid, MariaDB().valid], ["pg", "maria"])
    token = gtids.carried({"maria": "0-1-42", "other": "x"})
    assert token is not None and token.positions == ("", "0-1-42")
    assert gtids.carried({"pg": "0-1-42"}) is None  # not an LSN
    assert gtids.carried({"pg": 5}) is None
    assert gtids.carried("0/1") is None
    assert gtids.carried({f"k{i}": "0/1" for i in range(65)}) is None
