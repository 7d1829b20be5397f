"""The figures behind the package's micro-optimisation comments, in instructions.

``python -m bench.micro`` runs each variant under valgrind's callgrind twice,
for 1,000 and 11,000 calls, and prints the difference divided by 10,000: the
instructions of one call, start-up cancelled. Each comment in wsgi_sqla/ that
prefers one spelling to a plainer one (a loop to ``any()``, ``is_live`` to
``registry.has()``, ...) quotes the pair measured here. Needs ``valgrind``.

``python -m bench.micro VARIANT N`` runs one variant ``N`` times (what
callgrind is pointed at).
"""

from __future__ import annotations

import contextvars
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla import SessionMiddleware
from wsgi_sqla._registry import is_live

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

db: scoped_session[Any] = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
sessions = (db,)

# The pairs the comments quote: (what the package does, the plainer spelling).
PAIRS = [
    ("miss_is_live", "miss_has"),  # _registry.is_live
    ("idle_loop", "idle_any"),  # UnitOfWork.idle
    ("live_loop", "live_comp"),  # UnitOfWork.commit (one live session)
    ("gen1", "next1"),  # RequestUnit.__iter__, one chunk
    ("gen10", "next10"),  # RequestUnit.__iter__, ten chunks
    ("request_list", "request_subclass"),  # RequestUnit._plain
]
SMALL, LARGE = 1_000, 11_000


def miss_is_live() -> bool:
    return is_live(db)


def miss_has() -> bool:
    return bool(db.registry.has())


def idle_loop() -> bool:
    for scoped in sessions:  # noqa: SIM110
        if is_live(scoped):
            return False
    return True


def idle_any() -> bool:
    return not any(is_live(scoped) for scoped in sessions)


def live_loop() -> list[Any]:
    live = []
    for scoped in sessions:
        if is_live(scoped):
            live.append(scoped.registry())
    return live


def live_comp() -> list[Any]:
    return [scoped.registry() for scoped in sessions if is_live(scoped)]


current: contextvars.ContextVar[int] = contextvars.ContextVar("current")
_END: Any = object()


class Generator:
    """RequestUnit.__iter__'s loop: the unit set around each ``next()``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.iterator = iter(chunks)

    def __iter__(self) -> Iterator[bytes]:
        iterator = self.iterator
        while True:
            token = current.set(1)
            try:
                chunk = next(iterator, _END)
            finally:
                current.reset(token)
            if chunk is _END:
                return
            yield chunk


class Next:
    """The same loop as ``__next__``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.iterator = iter(chunks)

    def __iter__(self) -> Next:
        return self

    def __next__(self) -> bytes:
        token = current.set(1)
        try:
            chunk: bytes = next(self.iterator, _END)
        finally:
            current.reset(token)
        if chunk is _END:
            raise StopIteration
        return chunk


def gen1() -> None:
    for _ in Generator([b"x"]):
        pass


def next1() -> None:
    for _ in Next([b"x"]):
        pass


def gen10() -> None:
    for _ in Generator([b"x"] * 10):
        pass


def next10() -> None:
    for _ in Next([b"x"] * 10):
        pass


class Chunks(list[bytes]):
    """A one-chunk body that is not exactly a list."""


def _request(body: Callable[[], list[bytes]]) -> Callable[[], None]:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body()

    middleware = SessionMiddleware(app, db)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def run() -> None:
        response = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)
        for _ in response:
            pass
        getattr(response, "close", lambda: None)()

    return run


request_list = _request(lambda: [b"hello"])
request_subclass = _request(lambda: Chunks([b"hello"]))


def instructions(variant: str, calls: int) -> int:
    """The instructions callgrind counts for a process that runs ``variant`` ``calls`` times."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.micro", variant, str(calls)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", output)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output}")
    return int(match[1])


def per_call(variant: str) -> int:
    return (instructions(variant, LARGE) - instructions(variant, SMALL)) // (LARGE - SMALL)


def main(argv: list[str]) -> None:
    if argv:
        variant, calls = argv[0], int(argv[1])
        run: Callable[[], object] = globals()[variant]
        if variant.startswith("live_"):
            db()  # a live session, as at a commit
        for _ in range(calls + 1):
            run()
        return
    print(f"instructions per call (callgrind, Python {sys.version.split()[0]})")
    for used, plain in PAIRS:
        print(f"{used:>14} {per_call(used):>7,}   {plain:<16} {per_call(plain):>7,}")


if __name__ == "__main__":
    main(sys.argv[1:])
