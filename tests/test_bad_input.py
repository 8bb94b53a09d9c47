"""Bad specs, tried as a new user would: each is one line on stderr naming the file, the line
and the loss, exit code 2, no traceback, and nothing on disk changes.

Every bad spec is built together with a good one (`good.py bad.py`), into a directory that
already holds the good spec's generated files: the failure in the middle of a multi-spec build
must leave all of them, and the spec directory itself (no __pycache__), exactly as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lossgen.cli import main
from lossgen.errors import SpecError

HEADER = "import sympy as sp\nfrom lossgen import Loss, Param, Tensor\n"
GOOD = HEADER + 'x = Tensor("x")\ngood = Loss("Good", x**2)\n'


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and mtime: what "untouched" means."""
    return {
        path.relative_to(root).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp project with good.py already built into out/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.py").write_text(GOOD)
    assert main(["build", "good.py", "-o", "out"]) == 0
    assert (tmp_path / "out" / "good.py").is_file()
    return tmp_path


def build_bad(
    project: Path, spec: str, capsys: pytest.CaptureFixture[str], command: str = "build"
) -> str:
    """Run the CLI on good.py + bad.py; assert exit 2, one stderr line, disk untouched."""
    (project / "bad.py").write_text(spec)
    capsys.readouterr()
    before = snapshot(project)
    argv = [command, "good.py", "bad.py"] + (["-o", "out"] if command != "show" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert snapshot(project) == before
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("lossgen: error: ")
    return lines[0]


def line_of(spec: str, marker: str) -> int:
    """1-based line of the first line containing marker."""
    return next(i for i, text in enumerate(spec.splitlines(), 1) if marker in text)


def assert_names(message: str, spec: str, marker: str, loss: str | None) -> None:
    assert f"bad.py:{line_of(spec, marker)}: " in message, message
    if loss is not None:
        assert f"loss {loss!r}" in message, message


# --- the spec does not run ----------------------------------------------------------------------


def test_syntax_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = HEADER + 'x = Tensor("x")\nbroken = Loss("Broken", x +)\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "x +)", None)
    assert "syntax error" in message


def test_import_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = HEADER + "import no_such_module_for_lossgen\n"
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "no_such_module", None)
    assert "ModuleNotFoundError" in message and "no_such_module_for_lossgen" in message


def test_error_raised_inside_sympy_names_the_spec_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = HEADER + 'x = Tensor("x")\n\nbad = Loss("Bad", Tensor("y") + [1])\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "[1]", None)
    assert "TypeError" in message


def test_spec_that_exits(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = HEADER + "import sys\nsys.exit(3)\n"
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "sys.exit", None)
    assert "SystemExit" in message


def test_missing_spec_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(project)
    assert main(["build", "good.py", "nowhere.py", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere.py" in err and "not found" in err
    assert snapshot(project) == before


# --- what the spec declares ----------------------------------------------------------------------


def test_spec_without_a_loss(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = HEADER + 'x = Tensor("x")\nsquare = x**2  # forgot Loss(...)\n'
    message = build_bad(project, spec, capsys)
    assert "bad.py:1: " in message and "no Loss(...)" in message


def test_duplicate_loss_names(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = (
        HEADER + 'x = Tensor("x")\na = Loss("Twice", x**2)\nb = Loss("Twice", x**4)\n'
    )
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "x**4", "Twice")
    assert (
        f"duplicate loss name (first declared on line {line_of(spec, 'x**2')})"
        in message
    )


def test_name_clashing_with_a_loss_of_another_spec(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # good.py defines Good, GoodFunction and good: a loss called GoodFunction would clash.
    spec = HEADER + 'x = Tensor("x")\nclash = Loss("GoodFunction", x**2)\n'
    message = build_bad(project, spec, capsys)
    assert "clashes" in message and "'Good'" in message and "good.py:" in message


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("my loss", "not a valid Python identifier"),
        ("Caf\u00e9", "not a valid Python identifier"),  # ASCII only
        ("A;import os", "not a valid Python identifier"),
        ("None", "CamelCase class name"),
        ("lowercase", "CamelCase class name"),
        ("Sum", "shadows a builtin"),  # would generate sum()
        ("Import", "is a keyword"),  # would generate import()
        ("Torch", "shadows a builtin or module"),
    ],
)
def test_bad_loss_name(
    project: Path, capsys: pytest.CaptureFixture[str], name: str, complaint: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss({name!r}, x**2)\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", name)
    assert complaint in message


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("a b", "not a valid Python identifier"),
        ("lambda", "not a valid Python identifier"),
        ("x=1):\\n import os #", "not a valid Python identifier"),
        ("torch", "reserved for the generated code"),
        ("self", "reserved for the generated code"),
        ("grad_x", "reserved for the generated code"),
        ("tmp0", "reserved for the generated code"),
        ("isinstance", "shadow the Python builtin"),
        ("float", "shadow the Python builtin"),
        ("LFunction", "a name the generated module defines"),
        ("l", "a name the generated module defines"),  # the function l() of loss L
    ],
)
def test_bad_argument_name(
    project: Path, capsys: pytest.CaptureFixture[str], name: str, complaint: str
) -> None:
    spec = HEADER + f't = Tensor({name!r})\nloss = Loss("L", t**2)\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert complaint in message


# --- the expression ------------------------------------------------------------------------------


def test_free_symbol_not_made_by_tensor_or_param(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = HEADER + 'x = Tensor("x")\nz = sp.Symbol("z")\nloss = Loss("L", x * z)\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert "symbol 'z' was not made by Tensor(...) or Param(...)" in message


@pytest.mark.parametrize("expr", ["x * sp.I", "sp.log(-1) * x", "sp.sqrt(-2) + x"])
def test_complex_valued(
    project: Path, capsys: pytest.CaptureFixture[str], expr: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss("L", {expr})\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert "complex-valued" in message


@pytest.mark.parametrize("expr", ["sp.Matrix([x, x**2])", "[x, x**2]"])
def test_non_scalar(
    project: Path, capsys: pytest.CaptureFixture[str], expr: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss("L", {expr})\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert "one scalar (elementwise) expression" in message


@pytest.mark.parametrize(
    ("expr", "named"),
    [
        ("sp.zeta(x)", "zeta"),
        ("sp.Integral(x**2, x)", "Integral"),
        ('sp.Derivative(sp.Function("f")(x), x)', "Derivative"),
        ("sp.Derivative(x**3, x, evaluate=False)", "Derivative"),
        ('sp.Function("f")(x)', "undefined function f"),
        ("sp.gamma(x)", "gamma"),
    ],
)
def test_unsupported_function(
    project: Path, capsys: pytest.CaptureFixture[str], expr: str, named: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss("L", {expr})\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert message.endswith(f"unsupported in a loss expression: {named}")


@pytest.mark.parametrize("expr", ["x > 0", '"x**2"', "None", "x * sp.nan"])
def test_not_a_number_valued_expression(
    project: Path, capsys: pytest.CaptureFixture[str], expr: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss("L", {expr})\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")


@pytest.mark.parametrize(
    ("default", "complaint"),
    [
        ('"1.0"', "default must be a float, not str"),
        ("[1.0]", "default must be a float, not list"),
        ("True", "default must be a float, not bool"),
        ("float('nan')", "default must be finite"),
        ("10**400", "default must be finite"),
    ],
)
def test_param_default_of_the_wrong_type(
    project: Path, capsys: pytest.CaptureFixture[str], default: str, complaint: str
) -> None:
    spec = (
        HEADER
        + f'x = Tensor("x")\nw = Param("w", default={default})\nloss = Loss("L", w * x**2)\n'
    )
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert f"param 'w': {complaint}" in message


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ('\'ends the docstring """ here\'', "triple quotes"),
        ("'a\\x00b'", "control characters"),
        ("'carriage\\rreturn'", "control characters"),
        ("42", "doc must be a string"),
    ],
)
def test_bad_doc(
    project: Path, capsys: pytest.CaptureFixture[str], doc: str, complaint: str
) -> None:
    spec = HEADER + f'x = Tensor("x")\nloss = Loss("L", x**2, doc={doc})\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert complaint in message


def test_bad_reduction(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = HEADER + 'x = Tensor("x")\nloss = Loss("L", x**2, reduction="max")\n'
    message = build_bad(project, spec, capsys)
    assert_names(message, spec, "Loss(", "L")
    assert "reduction must be one of" in message


# --- every command, and --debug -----------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "show"])
def test_check_and_show_report_spec_errors_the_same_way(
    project: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    spec = HEADER + 'x = Tensor("x")\nloss = Loss("L", sp.zeta(x))\n'
    message = build_bad(project, spec, capsys, command=command)
    assert_names(message, spec, "Loss(", "L")


def test_debug_shows_the_traceback(project: Path) -> None:
    (project / "bad.py").write_text(
        HEADER + 'x = Tensor("x")\nloss = Loss("L", sp.zeta(x))\n'
    )
    with pytest.raises(SpecError, match="zeta"):
        main(["--debug", "build", "bad.py", "-o", "out"])


def test_output_directory_is_not_created_when_the_build_fails(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "bad.py").write_text(
        HEADER + 'x = Tensor("x")\nloss = Loss("L", sp.zeta(x))\n'
    )
    assert main(["build", "bad.py", "-o", "fresh"]) == 2
    assert not (project / "fresh").exists()


def test_unwritable_output_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "taken").write_text("a file where the output directory should go\n")
    capsys.readouterr()
    assert main(["build", "good.py", "-o", "taken"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "taken" in err


# --- writes: atomic, and only when the content changes ----------------------------------


def test_identical_rebuild_touches_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project / "out")
    capsys.readouterr()
    assert main(["build", "good.py", "-o", "out"]) == 0
    assert "0 written, 2 unchanged" in capsys.readouterr().out
    assert snapshot(project / "out") == before


def test_rebuild_rewrites_only_what_changed(project: Path) -> None:
    (project / "second.py").write_text(
        HEADER + 'y = Tensor("y")\nsecond = Loss("Second", y**4)\n'
    )
    assert main(["build", "good.py", "second.py", "-o", "out"]) == 0
    before = snapshot(project / "out")
    (project / "second.py").write_text(
        HEADER + 'y = Tensor("y")\nsecond = Loss("Second", y**6)\n'
    )
    assert main(["build", "good.py", "second.py", "-o", "out"]) == 0
    after = snapshot(project / "out")
    assert after["good.py"] == before["good.py"]
    assert after["__init__.py"] == before["__init__.py"]
    assert after["second.py"][0] != before["second.py"][0]
    # no temporary files are left behind
    assert sorted(after) == ["__init__.py", "good.py", "second.py"]


def test_a_hand_edited_file_is_rewritten_with_normal_permissions(project: Path) -> None:
    target = project / "out" / "good.py"
    target.write_text(target.read_text() + "# edited\n")
    reference = project / "plain.txt"
    reference.write_text("")  # what a plain open() gives under this umask
    target.chmod(reference.stat().st_mode & 0o777)
    new = project / "out2"
    assert main(["build", "good.py", "-o", "out"]) == 0
    assert main(["build", "good.py", "-o", str(new)]) == 0
    assert "# edited" not in target.read_text()
    # mkstemp's private 0600 must not leak into generated files
    assert (new / "good.py").stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    assert target.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    assert os.access(new / "good.py", os.R_OK)
