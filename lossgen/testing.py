"""Helpers for a project's own tests: prove committed generated code current and correct.

    from lossgen.testing import assert_losses_verified

    def test_generated_losses():
        assert_losses_verified(["specs/*.py"], out_dir="generated")

Run it from the directory `lossgen build` was run from (usually the project root): generated
headers name the spec paths relative to it. The pytest plugin (`lossgen.pytest_plugin`, loaded
automatically once lossgen is installed) offers the same as the `lossgen_check` fixture, which
changes to pytest's rootdir first.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from lossgen.errors import SpecError

PathLike = str | os.PathLike[str]


def expand_specs(spec_paths: Sequence[PathLike] | PathLike) -> list[str]:
    """Spec paths with shell-style globs expanded (sorted), so `specs/*.py` works everywhere."""
    if isinstance(spec_paths, (str, os.PathLike)):
        spec_paths = [spec_paths]
    expanded: list[str] = []
    for pattern in map(os.fspath, spec_paths):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise SpecError(f"no spec files match {pattern!r}")
            expanded += matches
        else:
            expanded.append(pattern)
    return expanded


def assert_losses_verified(
    spec_paths: Sequence[PathLike] | PathLike,
    out_dir: PathLike = "generated",
    *,
    numeric: bool = True,
) -> None:
    """Fail (AssertionError with lossgen check's report) unless `out_dir` is exactly what the
    specs generate and, with `numeric`, every generated loss passes verification.

    A spec that does not load raises lossgen's SpecError (naming file and line) instead.
    """
    from lossgen.verify import check  # imports torch: only when used

    report = check(expand_specs(spec_paths), out_dir, numeric=numeric)
    if not report.ok:
        raise AssertionError("lossgen check failed:\n" + report.to_text())
