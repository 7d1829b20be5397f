"""Plays a migrations how-to page as a reader would: its files written, its commands run.

A page is read top to bottom, and each step is one of:

* a ``.. literalinclude::`` with a ``:caption:``: the included file, whole,
  is written to the path that the caption starts with (``:start-at:`` and
  ``:pyobject:`` choose only what the page shows);
* a ``.. code-block:: console``: each ``$ `` line is run, split as a shell
  would split it, in the project's directory, and must succeed;
* a ``.. checkpoint: <name>`` comment (invisible on the page): where a test
  may stop to look at the database.

So a page cannot show a command or a file that the tests do not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^\.\. (literalinclude|code-block)::\s*(\S*)\s*$")
CHECKPOINT = re.compile(r"^\.\. checkpoint: (.+?)\s*$")
OPTION = re.compile(r"^\s+:([\w-]+):\s*(.*)$")


@dataclass(frozen=True)
class Write:
    """Write the repository's file ``source`` to ``target`` in the project."""

    source: Path
    target: str


@dataclass(frozen=True)
class Run:
    """Run ``command`` in the project (``line`` is where the page shows it)."""

    command: str
    line: int


@dataclass(frozen=True)
class Checkpoint:
    name: str


Step = Write | Run | Checkpoint


def steps(page: str) -> list[Step]:
    """The steps of ``docs/<page>``, in page order."""
    path = DOCS / page
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Step] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if checkpoint := CHECKPOINT.match(line):
            found.append(Checkpoint(checkpoint.group(1)))
            continue
        directive = DIRECTIVE.match(line)
        if directive is None:
            continue
        kind, argument = directive.groups()
        options: dict[str, str] = {}
        while index < len(lines) and (option := OPTION.match(lines[index])):
            options[option.group(1)] = option.group(2)
            index += 1
        if kind == "literalinclude" and "caption" in options:
            found.append(Write((path.parent / argument).resolve(), options["caption"].split()[0]))
        elif kind == "code-block" and argument == "console":
            while index < len(lines) and (not lines[index] or lines[index].startswith(" ")):
                text = lines[index].strip()
                if text.startswith("$ "):
                    found.append(Run(text[2:], index + 1))
                index += 1
    return found


def play(page: str, project: Path, database_url: str, *, until: str | None = None) -> None:
    """Follow ``docs/<page>`` in ``project`` against ``database_url``, up to checkpoint ``until``.

    The commands find the virtual environment's scripts (``alembic``,
    ``flask``) first on ``PATH`` and read ``DATABASE_URL``. A command that
    fails raises :class:`AssertionError` with its output.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
    }
    env.pop("FLASK_APP", None)
    all_steps = steps(page)
    names = [step.name for step in all_steps if isinstance(step, Checkpoint)]
    assert until is None or until in names, f"{page} has no checkpoint {until!r}: {names}"
    for step in all_steps:
        if isinstance(step, Checkpoint) and step.name == until:
            return
        if isinstance(step, Write):
            target = project / step.target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(step.source, target)
        elif isinstance(step, Run):
            done = subprocess.run(
                shlex.split(step.command),
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (
                f"docs/{page}:{step.line}: `{step.command}` exited {done.returncode}\n"
                f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
            )
