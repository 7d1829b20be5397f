"""The documentation's code examples run as shown, so that none of them can rot.

Runnable examples in ``docs/`` are written as Sphinx doctest blocks:
``.. testcode:: group``, shown, and ``.. testcode:: group`` with ``:hide:``,
a hidden check of what the shown code did. This module reads them itself,
without Sphinx, and runs each group of each page twice, in one namespace and
a fresh temporary directory each time, on SQLite:

* as shown: the shown blocks alone, in page order, exactly what a reader
  pastes; so no example may lean on hidden set-up (a ``testsetup`` block,
  or a hidden block the shown code needs, fails here);
* with its checks: the shown and the hidden blocks in page order, so that
  what the text claims (a row committed, a count) is checked too.

``README.rst`` has no Sphinx (it is rendered by the package index), so every
``.. code-block:: python`` in it must run as it stands.

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
from typing import Any

import pytest
from celery import _state
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]
# Celery's private app registry, read and restored around each example (not typed API).
celery_state: Any = _state
DIRECTIVE = re.compile(r"^\.\. (testsetup|testcode|code-block)::[ \t]*(\S*)[ \t]*$")


@dataclass
class Block:
    """One block of code: where it starts, its text, whether the reader sees it."""

    line: int
    code: str
    shown: bool


@dataclass
class Example:
    """One group of runnable blocks on one page."""

    page: str
    group: str
    blocks: list[Block] = field(default_factory=list)


def blocks(text: str) -> Iterator[tuple[str, str, int, list[str], str]]:
    """Each ``(directive, argument, line number, options, code)`` of a reStructuredText page."""
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
        options = []
        while body and (option := re.match(r"^\s+:([\w-]+):", body[0])):
            options.append(option[1])
            body = body[1:]
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        yield match[1], match[2], start, options, code


def examples(root: Path = ROOT) -> list[Example]:
    """Every runnable group of ``docs/**/*.rst`` and of ``README.rst`` under ``root``."""
    found: dict[tuple[str, str], Example] = {}
    pages = [root / "README.rst", *sorted((root / "docs").rglob("*.rst"))]
    for path in pages:
        page = path.relative_to(root).as_posix()
        readme = path.name == "README.rst"
        for directive, argument, line, options, code in blocks(path.read_text(encoding="utf-8")):
            if readme:
                if directive == "code-block" and argument == "python":
                    example = found.setdefault((page, "README"), Example(page, "README"))
                    example.blocks.append(Block(line, code, shown=True))
                continue
            if directive == "code-block":
                continue
            shown = directive == "testcode" and "hide" not in options
            example = found.setdefault((page, argument), Example(page, argument))
            example.blocks.append(Block(line, code, shown))
    return [example for example in found.values() if any(b.shown for b in example.blocks)]


def run(blocks: list[Block], page: str) -> None:
    """Run ``blocks`` in order in one namespace, as one module, in the current directory."""
    # A real module, since SQLAlchemy resolves ``Mapped[...]`` in the class's module.
    module = types.ModuleType("docs_example")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    # ``@app.task`` shares its task with every Celery app finalized later, through a
    # process-wide list: left there, an example's tasks would join the test suite's apps
    # (twice, as each example runs twice: Celery's DuplicateTaskNameWarning).
    shared_tasks = set(celery_state._on_app_finalizers)
    current_app = celery_state.get_current_app()
    try:
        for block in blocks:
            exec(compile(block.code, f"{page}:{block.line + 1}", "exec"), namespace)
    finally:
        celery_state._on_app_finalizers.intersection_update(shared_tasks)
        celery_state._set_current_app(current_app)
        del sys.modules[module.__name__]
        for value in namespace.values():
            if isinstance(value, Engine):
                value.dispose()


EXAMPLES = examples()


@pytest.mark.parametrize(
    "example",
    [pytest.param(example, id=f"{example.page}:{example.group}") for example in EXAMPLES],
)
def test_documentation_example_runs_as_shown(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run([block for block in example.blocks if block.shown], example.page)


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(example, id=f"{example.page}:{example.group}")
        for example in EXAMPLES
        if not all(block.shown for block in example.blocks)
    ],
)
def test_documentation_example_passes_its_hidden_checks(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run(example.blocks, example.page)


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
        ("testcode", "second", 3, ["hide"], "x = 1\nif x:\n    y = 2\n"),
        ("code-block", "python", 10, [], 'print("shown")\n'),
    ]


def test_an_example_leaning_on_hidden_set_up_fails_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.rst").write_text(
        ".. testsetup:: g\n\n    x = 1\n\n"
        ".. testcode:: g\n   :hide:\n\n    y = 2\n\n"
        ".. testcode:: g\n\n    assert x + y == 3\n"
    )
    (tmp_path / "README.rst").write_text("")
    monkeypatch.chdir(tmp_path)
    (example,) = examples(tmp_path)
    assert [block.shown for block in example.blocks] == [False, False, True]
    with pytest.raises(NameError):
        run([block for block in example.blocks if block.shown], example.page)
    run(example.blocks, example.page)
