"""pytest plugin: `lossgen_check`, a fixture that proves generated losses current and correct.

Registered through the `pytest11` entry point, so it is active once lossgen is installed:

    def test_generated_losses_are_current(lossgen_check):
        lossgen_check(["specs/*.py"], out_dir="generated")

Paths are relative to pytest's rootdir, where the fixture runs the check from (generated
headers name spec paths relative to the directory `lossgen build` ran in). Without arguments it
uses the ini options `lossgen_specs` (globs, one per line) and `lossgen_out`. Pass
`--lossgen-no-numeric` to check drift only (fast).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest

from lossgen.testing import PathLike, assert_losses_verified

LossgenCheck = Callable[..., None]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lossgen")
    group.addoption(
        "--lossgen-no-numeric",
        action="store_true",
        default=False,
        help="lossgen_check: only check that generated code is current (skip gradchecks)",
    )
    parser.addini(
        "lossgen_specs", "spec files (globs) for lossgen_check", type="linelist"
    )
    parser.addini(
        "lossgen_out", "output directory for lossgen_check", default="generated"
    )


@pytest.fixture
def lossgen_check(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> LossgenCheck:
    """A function `(specs=None, out_dir=None, *, numeric=None)` that fails the test unless
    `lossgen check` passes; defaults come from the ini options and --lossgen-no-numeric.
    """
    config = request.config

    def run(
        specs: Sequence[PathLike] | PathLike | None = None,
        out_dir: PathLike | None = None,
        *,
        numeric: bool | None = None,
    ) -> None:
        monkeypatch.chdir(config.rootpath)
        specs = specs if specs is not None else config.getini("lossgen_specs")
        if not specs:
            raise pytest.UsageError(
                "lossgen_check: pass spec paths, or set lossgen_specs in the pytest ini"
            )
        out = out_dir if out_dir is not None else config.getini("lossgen_out")
        if numeric is None:
            numeric = not config.getoption("lossgen_no_numeric")
        __tracebackhide__ = True
        assert_losses_verified(specs, os.fspath(out), numeric=numeric)

    return run
