"""Shared fixtures: the repository's specs, run from the repository root."""

from __future__ import annotations

import functools
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


@functools.cache
def repository_derived() -> tuple:
    """Every shipped loss, derived once for the whole session (derivation is the slow part)."""
    from lossgen.api import derive_all

    previous = os.getcwd()
    os.chdir(ROOT)  # header paths are relative to the current directory
    try:
        return tuple(derive_all(SPEC_ARGS))
    finally:
        os.chdir(previous)


@functools.cache
def repository_files() -> tuple:
    """What `lossgen build specs/*.py` generates, in memory, from repository_derived()."""
    from lossgen.api import generate_derived

    return generate_derived(repository_derived())


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spec paths in generated headers are relative to the current directory.
    monkeypatch.chdir(ROOT)
