"""The pytest plugin (`lossgen_check` fixture) and `lossgen.testing`, as a user uses them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import lossgen.verify  # noqa: F401 - see below
from conftest import ROOT
from lossgen.api import build
from lossgen.errors import SpecError
from lossgen.testing import assert_losses_verified, expand_specs

pytest_plugins = ["pytester"]

# Load the plugin by module, and block the entry-point copy in case lossgen is pip-installed
# (the same module registered twice under two names is an error in pluggy).
PLUGIN_ARGS = ("-p", "no:lossgen", "-p", "lossgen.pytest_plugin")
# In-process pytester runs drop the modules each inner run imported; torch's C extension then
# crashes when its modules are imported a second time. Everything the inner runs need
# (lossgen.verify and torch) is imported here, once, before them; and a verification runs
# once here too, so torch's lazily imported parts are loaded as well.


def make_project(root: Path) -> None:
    """A user's project: specs/ and the committed generated/ built from them."""
    (root / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "tutorial.py", root / "specs" / "tutorial.py")
    build(["specs/tutorial.py"], root / "generated")


def hand_edit(root: Path) -> None:
    target = root / "generated" / "custom_loss.py"
    target.write_text(
        target.read_text().replace("torch.sign(tmp0)", "torch.sign(tmp0) * 2")
    )


@pytest.fixture(scope="module", autouse=True)
def _torch_fully_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("warm")
    previous = Path.cwd()
    os.chdir(root)
    try:
        make_project(root)
        assert_losses_verified("specs/tutorial.py")
    finally:
        os.chdir(previous)


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester.path)
    return pytester


def test_fixture_passes_on_a_current_project(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(test_losses="""
        def test_generated_losses_are_current(lossgen_check):
            lossgen_check(["specs/*.py"], out_dir="generated")
        """)
    result = user_project.runpytest(*PLUGIN_ARGS)
    result.assert_outcomes(passed=1)


def test_fixture_fails_on_a_hand_edit_with_the_report(
    user_project: pytest.Pytester,
) -> None:
    user_project.makeini("""
        [pytest]
        lossgen_specs =
            specs/*.py
        lossgen_out = generated
        """)
    user_project.makepyfile(test_losses="""
        def test_generated_losses_are_current(lossgen_check):
            lossgen_check()
        """)
    hand_edit(user_project.path)
    result = user_project.runpytest(*PLUGIN_ARGS, "--lossgen-no-numeric")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*lossgen check failed:*",
            "*stale: custom_loss.py differs from what the specs generate*",
        ]
    )


def test_fixture_runs_from_the_rootdir(user_project: pytest.Pytester) -> None:
    # A test in a subdirectory, with pytest started elsewhere: paths stay rootdir-relative.
    user_project.makeini("[pytest]\n")
    sub = user_project.mkpydir("tests")
    (sub / "test_losses.py").write_text(
        "def test_losses(lossgen_check):\n"
        "    lossgen_check('specs/tutorial.py', numeric=False)\n"
    )
    result = user_project.runpytest(
        *PLUGIN_ARGS, "--rootdir", str(user_project.path), str(sub)
    )
    result.assert_outcomes(passed=1)


def test_fixture_without_specs_is_a_usage_error(user_project: pytest.Pytester) -> None:
    user_project.makeini("[pytest]\n")
    user_project.makepyfile(
        test_losses="def test_x(lossgen_check):\n    lossgen_check()\n"
    )
    result = user_project.runpytest(*PLUGIN_ARGS)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*lossgen_specs*"])


# --- lossgen.testing, without pytest's help ------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_project(tmp_path)
    return tmp_path


def test_assert_losses_verified_passes_then_catches_an_edit(project: Path) -> None:
    assert_losses_verified(["specs/*.py"], out_dir="generated")
    hand_edit(project)
    with pytest.raises(AssertionError, match="stale: custom_loss.py"):
        assert_losses_verified("specs/tutorial.py", out_dir="generated", numeric=False)


def test_expand_specs(project: Path) -> None:
    (project / "specs" / "another.py").write_text("")
    assert expand_specs("specs/*.py") == ["specs/another.py", "specs/tutorial.py"]
    assert expand_specs(["specs/tutorial.py", Path("x.py")]) == [
        "specs/tutorial.py",
        "x.py",
    ]
    with pytest.raises(SpecError, match="no spec files match 'nothing/\\*.py'"):
        expand_specs(["nothing/*.py"])
