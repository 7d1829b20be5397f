"""The documentation's code examples run, so that none of them can rot.

Runnable examples in ``docs/`` are written as Sphinx doctest blocks:
``.. testcode:: group`` (shown; ``:hide:`` for a hidden check that follows an
example) and ``.. testsetup:: group`` (hidden set-up). This module reads
them itself, without Sphinx: each group of each page runs as one test, its
set-up blocks first, then its code blocks in page order, in one namespace and
in a fresh temporary directory, on SQLite. ``README.rst`` has no Sphinx (it
is rendered by the package index), so every ``.. code-block:: python`` in it
must run as it stands.

Examples that need something SQLite cannot give (a PostgreSQL server, a
gunicorn configuration) stay plain ``.. code-block::`` and are checked by the
tests that the guarantees page links to.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]
DIRECTIVE = re.compile(r"^\.\. (testsetup|testcode|code-block)::[ \t]*(\S*)[ \t]*$")


@dataclass
class Example:
    """One group of runnable blocks on one page."""

    page: str
    group: str
    setup: list[tuple[int, str]] = field(default_factory=list)
    code: list[tuple[int, str]] = field(default_factory=list)


def blocks(text: str) -> Iterator[tuple[str, str, int, str]]:
    """Each ``(directive, argument, line number, code)`` of a reStructuredText page."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = DIRECTIVE.match(lines[index])
        index += 1
        if not match:
            continue
        start = index
        while index < len(lines) and (lines[index].startswith(" ") or not lines[index].strip()):
            index += 1
        body = lines[start:index]
        while body and re.match(r"^\s+:[\w-]+:", body[0]):  # directive options
            body = body[1:]
        yield match[1], match[2], start, textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def examples() -> list[Example]:
    """Every runnable group of ``docs/**/*.rst`` and of ``README.rst``."""
    found: dict[tuple[str, str], Example] = {}
    pages = [ROOT / "README.rst", *sorted((ROOT / "docs").rglob("*.rst"))]
    for path in pages:
        page = path.relative_to(ROOT).as_posix()
        readme = path.name == "README.rst"
        shared_setup: list[tuple[int, str]] = []
        for directive, argument, line, code in blocks(path.read_text(encoding="utf-8")):
            if readme:
                if directive == "code-block" and argument == "python":
                    found.setdefault((page, "README"), Example(page, "README")).code.append(
                        (line, code)
                    )
                continue
            if directive == "code-block":
                continue
            group = argument or "default"
            if directive == "testsetup" and group == "*":
                shared_setup.append((line, code))
                continue
            example = found.setdefault(
                (page, group), Example(page, group, setup=list(shared_setup))
            )
            (example.setup if directive == "testsetup" else example.code).append((line, code))
    return [example for example in found.values() if example.code]


EXAMPLES = examples()


@pytest.mark.parametrize(
    "example",
    [pytest.param(example, id=f"{example.page}:{example.group}") for example in EXAMPLES],
)
def test_documentation_example_runs(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # A real module, since SQLAlchemy resolves ``Mapped[...]`` in the class's module.
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for line, code in [*example.setup, *example.code]:
        exec(compile(code, f"{example.page}:{line + 1}", "exec"), namespace)
    for value in namespace.values():
        if isinstance(value, Engine):
            value.dispose()


def test_the_docs_and_the_readme_have_runnable_examples() -> None:
    pages = {example.page for example in EXAMPLES}
    assert "README.rst" in pages
    assert {"docs/quickstart.rst", "docs/rules.rst", "docs/models.rst"} <= pages


def test_blocks_reads_options_groups_and_indented_code() -> None:
    page = textwrap.dedent(
        """\
        Text.

        .. testcode:: second
           :hide:

            x = 1
            if x:
                y = 2

        .. code-block:: python

            print("shown")
        after
        """
    )
    assert list(blocks(page)) == [
        ("testcode", "second", 3, "x = 1\nif x:\n    y = 2\n"),
        ("code-block", "python", 10, 'print("shown")\n'),
    ]
