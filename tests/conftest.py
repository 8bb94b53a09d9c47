"""Shared fixtures: the repository's specs, run from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis profiles. "ci" (the default) runs the fuzz test's 200 examples in a few minutes;
# HYPOTHESIS_PROFILE=thorough runs thousands, for a release or after touching derive/printer.
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=5000, deadline=None, print_blob=True)
settings.register_profile("quick", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.py"))
SPEC_ARGS = [path.relative_to(ROOT).as_posix() for path in SPECS]


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spec paths in generated headers are relative to the current directory.
    monkeypatch.chdir(ROOT)
