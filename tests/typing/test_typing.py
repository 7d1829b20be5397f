"""The typed route through ActiveRecordMixin type-checks in user code under ``mypy --strict``."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

TYPED = Path(__file__).parent / "typed_models.py"


def mypy(*args: str) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run(["--strict", "--no-error-summary", *args])
    return stdout + stderr, status


def test_typed_models_module_passes_mypy_strict_without_plugin_or_ignores() -> None:
    source = TYPED.read_text()
    assert "type: ignore" not in source and "plugins" not in source
    output, status = mypy(str(TYPED))
    assert status == 0, output


def test_get_is_typed_as_optional_model_so_misuse_is_caught(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        TYPED.read_text()
        + "\n\ndef wrong() -> None:\n"
        + "    name: str = User.get(1).name\n"
        + "    count: int = User(name='x').save()\n"
    )
    output, status = mypy(str(misuse))
    assert status == 1
    assert 'Item "None" of "User | None" has no attribute "name"' in output
    assert (
        'Incompatible types in assignment (expression has type "User", variable has type "int")'
        in output
    )
