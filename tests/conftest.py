"""Shared fixtures: the repository's specs, run from the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.py"))
SPEC_ARGS = [path.relative_to(ROOT).as_posix() for path in SPECS]


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spec paths in generated headers are relative to the current directory.
    monkeypatch.chdir(ROOT)
