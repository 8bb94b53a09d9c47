"""Shared fixtures: the repository's specs, run from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE. "ci" (the default) keeps Hypothesis's
# example counts (the fuzz test asks for at least 200 itself), draws the same examples on every
# run (a CI failure is reproducible, never a coin toss on an unrelated change) and drops the
# per-example deadline, which a loaded CI machine would trip; "thorough" explores: 5000 random
# examples per property, for a release or after touching derive/printer/templates; "quick"
# runs 20, for iterating on a test.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
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
