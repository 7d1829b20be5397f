"""WSGI servers other than gunicorn, started the way :class:`~harness.servers.Gunicorn` is.

* :class:`Uwsgi`: uWSGI (the ``live`` extra), in its default pre-fork mode: the
  master imports the application, then forks the workers; no ``--lazy-apps``
  and none of the flags that make uWSGI run Python's fork hooks;
* :class:`Waitress`: ``waitress-serve``, one process, several threads;
* :class:`ModWsgi`: ``mod_wsgi-express`` from a venv on Debian's own Python
  (built by ``.ci/install-servers``), running Apache as root with its daemon
  processes as ``www-data``; the application and wsgi_sqla are copied into a
  directory that user can read.

:func:`launch` starts any of them, or gunicorn, by name and waits until its
workers serve; a server that is not installed raises
:class:`~harness.net.Unavailable` naming what to install.
:func:`sendfile_calls` traces a running server's processes with strace and
returns the ``sendfile`` calls they made.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .net import Unavailable, free_port
from .servers import READY_CONF, ROOT, Gunicorn, die_with_parent

__all__ = [
    "SERVER_NAMES",
    "ModWsgi",
    "Uwsgi",
    "Waitress",
    "launch",
    "readable_copy",
    "sendfile_calls",
    "session_processes",
]

UWSGI = Path(sys.executable).with_name("uwsgi")
WAITRESS = Path(sys.executable).with_name("waitress-serve")
MOD_WSGI_VENV = Path(os.environ.get("WSGI_SQLA_MOD_WSGI_VENV", "/opt/wsgi_sqla-mod_wsgi"))
STRACE = shutil.which("strace")

COMMON_TROUBLE = r"StaleSessionWarning"


@dataclass
class Launched(Gunicorn):
    """A server process started from ``command()``; subclasses say how it reports."""

    name: ClassVar[str] = "server"
    trouble: ClassVar[re.Pattern[str]] = re.compile(COMMON_TROUBLE)
    listening: ClassVar[re.Pattern[str]] = re.compile(r"$^")
    worker_count: int = 1
    root: Path = field(default_factory=lambda: ROOT)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30) -> None:
        """Start the server, its output going to the log, and wait until it listens."""
        self.spawn(self.root, output_to_log=True, timeout=timeout)

    def ready_workers(self) -> set[int]:
        return set(self.workers())

    def processes(self) -> list[int]:
        return session_processes(self)


class Uwsgi(Launched):
    """uWSGI's default pre-fork mode: the master loads the application, then forks."""

    name = "uwsgi"
    trouble = re.compile(
        COMMON_TROUBLE + r"|DAMN ! worker|HARAKIRI|Segmentation fault|unable to load app"
        r"|no app loaded|!!! uWSGI process"
    )
    listening = re.compile(r"bound to TCP address 127\.0\.0\.1:(\d+)")

    def command(self) -> list[str]:
        module, _, callable_name = self.app.partition(":")
        return [
            str(UWSGI),
            "--http-socket",
            "127.0.0.1:0",
            "--master",
            "--die-on-term",
            "--need-app",
            "--strict",
            "--processes",
            str(self.worker_count),
            "--chdir",
            str(self.root),
            *(f"--pythonpath={path}" for path in [self.root, *self.paths]),
            "--module",
            module,
            "--callable",
            callable_name or "application",
            "--listen",
            "128",
            *self.args,
        ]

    def ready_workers(self) -> set[int]:
        spawned = re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", self.log.read_text())
        return {int(pid) for pid in spawned} & set(self.workers())


class Waitress(Launched):
    """``waitress-serve``: one process whose threads serve the requests."""

    name = "waitress"
    listening = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")

    def command(self) -> list[str]:
        return [
            str(WAITRESS),
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "8",
            "--connection-limit",
            "200",
            # Below the 16 MiB the stream tests send: a client that hangs up is noticed
            # while the application is still producing (waitress buffers up to this much).
            "--outbuf-high-watermark",
            "1048576",
            *self.args,
            self.app,
        ]

    def start(self, timeout: float = 30) -> None:
        paths = [str(ROOT), *map(str, self.paths), os.environ.get("PYTHONPATH")]
        path = os.pathsep.join(filter(None, paths))
        self.env = {**self.env, "PYTHONPATH": path}
        super().start(timeout)

    def workers(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid] if self.process.poll() is None else []


class ModWsgi(Launched):
    """``mod_wsgi-express``: Apache with mod_wsgi daemon processes as ``www-data``."""

    name = "mod_wsgi"
    trouble = re.compile(COMMON_TROUBLE + r"|Segmentation fault|AH00052|Fatal Python error")
    listening = re.compile(r"Server URL\s*:\s*http://127\.0\.0\.1:(\d+)/")

    def command(self) -> list[str]:
        module, _, callable_name = self.app.partition(":")
        envvars = self.root / "envvars"
        envvars.write_text("".join(f"export {key}='{value}'\n" for key, value in self.env.items()))
        return [
            str(MOD_WSGI_VENV / "bin" / "mod_wsgi-express"),
            "start-server",
            "--application-type",
            "module",
            "--callable-object",
            callable_name or "application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--server-root",
            str(self.root / "apache"),
            "--envvars-script",
            str(envvars),
            "--python-path",
            str(self.root),
            "--processes",
            str(self.worker_count),
            "--threads",
            "5",
            "--user",
            "www-data",
            "--group",
            "www-data",
            "--enable-sendfile",
            "--log-to-terminal",
            "--startup-log",
            *self.args,
            module,
        ]

    def workers(self) -> list[int]:
        """The mod_wsgi daemon processes (named ``(wsgi:...)``), which run the application."""
        daemons = []
        for pid in self.processes():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"(wsgi:"):
                    daemons.append(pid)
        return daemons

    def ready_workers(self) -> set[int]:
        # Daemon processes load the application on their first request: ask until they answer.
        if len(self.workers()) >= self.worker_count:
            with contextlib.suppress(OSError):
                self.request("GET", "/", timeout=10)
                return set(self.workers())
        return set()


def session_processes(server: Gunicorn) -> list[int]:
    """Every live process of ``server``: its session (master, workers, helpers)."""
    assert server.process is not None
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == server.process.pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return sorted(found)


def readable_copy(*sources: Path) -> Path:
    """A directory the Apache user can read, holding copies of ``sources`` (files or trees)."""
    root = Path(tempfile.mkdtemp(prefix="wsgi_sqla-", dir="/var/tmp"))
    root.chmod(0o755)
    for source in sources:
        target = root / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


SERVER_NAMES = ["gunicorn", "uwsgi", "waitress", "mod_wsgi"]


def launch(
    name: str,
    app: str,
    *,
    env: dict[str, str],
    log_dir: Path,
    workers: int = 2,
    files: tuple[Path, ...] = (),
    paths: Sequence[Path] = (),
) -> Gunicorn:
    """Start server ``name`` serving ``app`` (``module:callable``) and wait until it serves.

    ``paths`` are where the application's modules are, besides the project
    root; ``files`` are what it needs there for mod_wsgi, which gets copies,
    with wsgi_sqla, where Apache's user can read. :class:`Unavailable` names
    what to install when the server is not here.
    """
    log = log_dir / f"{name}.log"
    server: Gunicorn
    if name == "gunicorn":
        args = ["--worker-class", "gthread", "--threads", "4", "--workers", str(workers)]
        args += ["--timeout", "60", "--config", str(READY_CONF)]
        server = Gunicorn(app, args, env, log, paths=list(paths))
    elif name == "uwsgi":
        if not UWSGI.exists():
            raise Unavailable(
                "uwsgi: pip install -e '.[live]' (the uwsgi package, compiled by pip)"
            )
        server = Uwsgi(app, [], env, log, worker_count=workers, paths=list(paths))
    elif name == "waitress":
        if not WAITRESS.exists():
            raise Unavailable("waitress: pip install -e '.[test]'")
        server = Waitress(app, [], env, log, paths=list(paths))
        workers = 1
    elif name == "mod_wsgi":
        if not (MOD_WSGI_VENV / "bin" / "mod_wsgi-express").exists():
            raise Unavailable(f"mod_wsgi-express in {MOD_WSGI_VENV}: run .ci/install-servers")
        try:
            pwd.getpwnam("www-data")
        except KeyError:
            raise Unavailable("a www-data user for Apache's mod_wsgi daemon processes") from None
        root = readable_copy(ROOT / "wsgi_sqla", ROOT / "harness", ROOT / "examples", *files)
        server = ModWsgi(app, [], env, log, worker_count=workers, root=root, cleanup=[root])
        server.port = free_port()  # Apache cannot be told to bind port 0
    else:
        raise ValueError(f"launch(): unknown server {name!r}")
    try:
        server.start()
        server.wait_for_workers(workers)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def sendfile_calls(server: Gunicorn) -> Iterator[list[int]]:
    """Trace every process of ``server`` during the block; the list gets sendfile results.

    The list is filled when the block ends: one entry per ``sendfile`` call,
    the number of bytes it sent.
    """
    if STRACE is None:
        raise Unavailable("strace: apt-get install strace (.ci/install-servers does)")
    assert server.process is not None
    pids = session_processes(server)
    handle, name = tempfile.mkstemp(prefix="wsgi_sqla-strace-")
    os.close(handle)
    out = Path(name)
    command = [STRACE, "-f", "-qq", "-e", "trace=sendfile", "-o", str(out)]
    for pid in pids:
        command += ["-p", str(pid)]
    tracer = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    time.sleep(0.5)  # strace attaches asynchronously
    calls: list[int] = []
    try:
        yield calls
    finally:
        time.sleep(0.2)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=15)
        text = out.read_text()
        out.unlink()
        calls.extend(int(n) for n in re.findall(r"sendfile\(.*\)\s*=\s*(\d+)", text))
