"""The docs' ``:test:`` role fails a ``-W`` build on a link to a test that does not exist."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support import missing

EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext"

TEST_FILE = """\
import pytest


@pytest.mark.parametrize("n", [1, 2])
def test_parametrised(n):
    assert n


def test_plain():
    pass


class TestGroup:
    def test_method(self):
        pass


def helper():
    pass
"""


def build(tmp_path: Path, link: str) -> int:
    """Build a one-page site whose page holds ``link``; sphinx-build's exit status."""
    try:
        from sphinx.cmd.build import build_main
    except ImportError:
        missing("Sphinx: pip install -e '.[test]'")
    (tmp_path / "tests").mkdir(exist_ok=True)
    (tmp_path / "tests" / "test_example.py").write_text(TEST_FILE)
    source = tmp_path / "docs"
    source.mkdir(exist_ok=True)
    (source / "conf.py").write_text(
        textwrap.dedent(
            f"""\
            import sys
            sys.path.insert(0, {str(EXT)!r})
            extensions = ["testrole"]
            test_role_root = {str(tmp_path)!r}
            """
        )
    )
    (source / "index.rst").write_text(f"Page\n====\n\n* a promise, checked by {link}\n")
    return build_main(
        [
            "-W",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(source),
            str(tmp_path / "html"),
        ]
    )


@pytest.mark.parametrize(
    "link",
    [
        pytest.param(":test:`tests/test_example.py::test_plain`", id="function"),
        pytest.param(":test:`tests/test_example.py::test_parametrised`", id="parametrised"),
        pytest.param(":test:`tests/test_example.py::TestGroup::test_method`", id="method"),
    ],
)
def test_a_link_to_an_existing_test_builds(tmp_path: Path, link: str) -> None:
    assert build(tmp_path, link) == 0


@pytest.mark.parametrize(
    ("link", "message"),
    [
        pytest.param(
            ":test:`tests/test_example.py::test_renamed`",
            "defines no test function 'test_renamed'",
            id="missing-function",
        ),
        pytest.param(
            ":test:`tests/test_example.py::helper`",
            "defines no test function 'helper'",
            id="not-a-test",
        ),
        pytest.param(
            ":test:`tests/test_moved.py::test_plain`",
            "tests/test_moved.py does not exist",
            id="missing-file",
        ),
        pytest.param(
            ":test:`tests/test_example.py`", "must be 'tests/<file>.py::<test", id="no-function"
        ),
    ],
)
def test_a_link_to_a_missing_test_fails_the_build(
    tmp_path: Path, link: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build(tmp_path, link) != 0
    assert message in capsys.readouterr().err
