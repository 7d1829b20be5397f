"""A new user's first hour, checked: the README's two commands and the quickstart's curl session.

In a fresh clone of this repository (what is committed, nothing else), with a new venv and
without the database URLs, as on a laptop:

1. the README's example command (between ``.. example-command-start`` and ``-end``), exactly
   as written, serving the Flask example under gunicorn; the curl session of the quickstart
   (between ``.. curl-session-start`` and ``-end``) is run against it and each answer compared
   with the one the page prints;
2. the same session against the Bottle example (``.venv/bin/gunicorn examples.bottle_app:app``,
   the quickstart's command), on a fresh SQLite file;
3. the README's test command, exactly as written.

The README's curl session must be the quickstart's, so neither can drift. gunicorn's port is
the only change: ``GUNICORN_CMD_ARGS=--bind`` picks a free one (8000 may be taken on a shared
machine) and the session's URLs follow. Run: ``python3 .ci/fresh_machine.py``; exits non-zero
on the first difference.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
BOTTLE_COMMAND = ".venv/bin/gunicorn examples.bottle_app:app"
# A laptop has none of these: the README's test command must pass without them.
UNSET = ("CI", "WSGI_SQLA_LIVE", "WSGI_SQLA_POSTGRESQL_URL", "WSGI_SQLA_MARIADB_URL")


def fail(message: str) -> NoReturn:
    sys.exit(f"fresh machine: {message}")


def between(text: str, name: str) -> list[str]:
    """The indented lines between ``.. <name>-start`` and ``.. <name>-end``, dedented."""
    found = re.search(rf"^\.\. {name}-start$(.*?)^\.\. {name}-end$", text, re.M | re.S)
    if found is None:
        fail(f"no '.. {name}-start' / '.. {name}-end' markers")
    return [line[4:] for line in found.group(1).splitlines() if line.startswith("    ")]


def session(text: str) -> list[tuple[str, str]]:
    """The (command, expected output) pairs of a console block: ``$ `` starts a command."""
    pairs: list[tuple[str, list[str]]] = []
    for line in between(text, "curl-session"):
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in pairs]


def answer(text: str) -> tuple[Any, list[str]]:
    """A body and what follows it: the JSON value, parsed, then the remaining words."""
    text = text.strip()
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None, text.split()
    return value, text[end:].split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(command: str, cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    print(f"fresh machine: $ {command}", flush=True)
    served = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env={**env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"},
        start_new_session=True,  # its own process group: the venv step, then gunicorn
    )
    deadline = time.monotonic() + 600  # the first command installs the examples' extra
    while time.monotonic() < deadline:
        if served.poll() is not None:
            fail(f"{command!r} exited with status {served.returncode} before serving")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return served
        except OSError:
            time.sleep(0.2)
    stop(served)
    fail(f"{command!r} did not serve on port {port} within 600 s")


def stop(served: subprocess.Popen[bytes]) -> None:
    os.killpg(served.pid, signal.SIGTERM)
    try:
        served.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(served.pid, signal.SIGKILL)
        served.wait()


def check_session(name: str, steps: list[tuple[str, str]], cwd: Path, port: int) -> None:
    for command, expected in steps:
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        ran = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)
        if ran.returncode != 0:
            fail(f"{name}: {command!r} exited with {ran.returncode}: {ran.stderr}")
        if answer(ran.stdout) != answer(expected):
            fail(f"{name}: {command!r}: the docs print {expected!r}, it answered {ran.stdout!r}")
        print(f"fresh machine: {name}: {ran.stdout.strip()!r} as the docs print", flush=True)


def main() -> None:
    readme = (ROOT / "README.rst").read_text()
    quickstart = (ROOT / "docs" / "quickstart.rst").read_text()
    steps = session(quickstart)
    if not steps:
        fail("the quickstart's curl session is empty")
    if session(readme) != steps:
        fail("the README's curl session differs from docs/quickstart.rst's")
    if f"    {BOTTLE_COMMAND}\n" not in quickstart:
        fail(f"docs/quickstart.rst no longer shows {BOTTLE_COMMAND!r}")
    [example_command] = between(readme, "example-command")
    [test_command] = between(readme, "test-command")
    env = {key: value for key, value in os.environ.items() if key not in UNSET}

    with tempfile.TemporaryDirectory(prefix="wsgi_sqla-fresh-") as tmp:
        clone = Path(tmp) / "wsgi_sqla"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        for name, command in (("flask", example_command), ("bottle", BOTTLE_COMMAND)):
            (clone / "wsgi_sqla_example.sqlite3").unlink(missing_ok=True)
            port = free_port()
            served = serve(command, clone, env, port)
            try:
                check_session(name, steps, clone, port)
            finally:
                stop(served)

        print(f"fresh machine: $ {test_command}", flush=True)
        started = time.monotonic()
        tested = subprocess.run(["bash", "-c", test_command], cwd=clone, env=env)
        took = time.monotonic() - started
        print(f"fresh machine: the README's test command took {took:.0f} s (no URLs)", flush=True)
        if tested.returncode != 0:
            fail(f"the README's test command failed with status {tested.returncode}")
    print("fresh machine: the README's commands and the quickstart's session, as documented")


if __name__ == "__main__":
    main()
