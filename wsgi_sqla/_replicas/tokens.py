"""Position tokens: what a client carries so that its next reads see its own writes.

A token is ``1.<issued unix time>.<position per primary, joined by ~>.<signature>``.
It travels in a cookie and in a header (for clients without cookies), and
comes back on the next request, so no server-side store is needed and any
process can serve that request. Nothing here touches a database: encoding,
signing, parsing and expiry are pure, which is why they live apart from the
routing and are tested without a server.

A token is input from a client, so parsing never raises: anything absent,
malformed, forged (with a ``secret``) or expired reads as ``None``, as if the
client had sent nothing. The worst a forged token can do is send its own
sender's reads to the primary.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["MAX_TOKEN_LENGTH", "POSITION_COOKIE", "POSITION_HEADER", "Token", "Tokens"]

#: The cookie that carries the position token (HttpOnly, SameSite=Lax, Path=/).
POSITION_COOKIE = "wsgi_sqla_position"
#: The request and response header that carries it for clients without cookies.
POSITION_HEADER = "Wsgi-Sqla-Position"
_HEADER_KEY = "HTTP_" + POSITION_HEADER.upper().replace("-", "_")
_COOKIE_PREFIX = POSITION_COOKIE + "="

#: Longest token accepted; anything longer is ignored unread.
MAX_TOKEN_LENGTH = 400
_VERSION = "1"
_SIGNATURE_HEX = 32  # 128 bits of HMAC-SHA256
#: Seconds a token's issue time may lie in the future (clocks of several hosts).
_SKEW = 5


class Token:
    """A token that passed every check: when it was issued, and a position per primary."""

    __slots__ = ("issued", "positions")

    def __init__(self, issued: int, positions: tuple[str, ...]) -> None:
        self.issued: int = issued
        #: per primary, in the order of ``Replicas``' mapping; ``""`` where it wrote nothing.
        self.positions: tuple[str, ...] = positions


class Tokens:
    """How one ``Replicas`` writes and reads tokens.

    ``formats`` holds, per primary, the check of a position's spelling (its
    dialect's); ``labels`` the names by which task messages carry them.
    """

    __slots__ = ("formats", "labels", "max_age", "secret")

    def __init__(
        self,
        secret: bytes | None,
        max_age: int,
        formats: Sequence[Callable[[str], bool]],
        labels: Sequence[str],
    ) -> None:
        self.secret: bytes | None = secret
        self.max_age: int = max_age
        self.formats: tuple[Callable[[str], bool], ...] = tuple(formats)
        self.labels: tuple[str, ...] = tuple(labels)

    def encode(self, positions: tuple[str, ...], now: float | None = None) -> str:
        """The token for ``positions``, issued now (signed if there is a secret)."""
        issued = int(time.time() if now is None else now)
        body = f"{_VERSION}.{issued}.{'~'.join(positions)}"
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        if self.secret is None:
            return "-"
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:_SIGNATURE_HEX]

    @staticmethod
    def cookie(value: str, max_age: int) -> str:
        """A ``Set-Cookie`` value carrying ``value`` (``max_age`` 0 drops the cookie)."""
        return f"{POSITION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"

    def read(self, environ: WSGIEnvironment) -> Token | None:
        """The request's token (header first, then cookie), or ``None`` if unusable."""
        raw = environ.get(_HEADER_KEY)
        if not raw:
            cookies = environ.get("HTTP_COOKIE")
            if not cookies or _COOKIE_PREFIX not in cookies:
                return None
            raw = cookie_value(cookies)
        return self.parse(raw)

    def parse(self, raw: object) -> Token | None:
        """``raw`` as a token, or ``None`` when malformed, forged or expired."""
        if not raw or not isinstance(raw, str) or len(raw) > MAX_TOKEN_LENGTH:
            return None
        parts = raw.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(body)):
            return None
        return self.checked(int(parts[1]), tuple(parts[2].split("~")))

    def checked(self, issued: int, positions: tuple[str, ...]) -> Token | None:
        """A token of these parts if it is fresh and has a valid position per primary."""
        now = time.time()
        if not now - self.max_age <= issued <= now + _SKEW:
            return None
        if len(positions) != len(self.formats):
            return None
        for valid, position in zip(self.formats, positions, strict=True):
            if position and not valid(position):
                return None
        if not any(positions):
            return None
        return Token(issued, positions)

    def carried(self, positions: object) -> Token | None:
        """The token a task message carried (``committed_positions()``), if usable.

        Task messages come from this application's own processes, not from
        clients, so they are not signed; anything malformed is ignored.
        """
        if not isinstance(positions, Mapping) or len(positions) > 64:
            return None
        found = []
        for label in self.labels:
            position = positions.get(label)
            found.append(position if isinstance(position, str) else "")
        return self.checked(int(time.time()), tuple(found))


def cookie_value(cookies: str) -> str | None:
    """The position cookie's value in a ``Cookie`` header, if present."""
    for item in cookies.split(";"):
        name, _, value = item.strip().partition("=")
        if name == POSITION_COOKIE:
            return value.strip('"')
    return None
