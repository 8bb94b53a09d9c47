"""`lossgen check`: drift (stale, missing, unexpected files, with a diff), numeric verification,
the summary table, --json, and exit codes 0 (all good), 1 (drift or failed check), 2 (spec error).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT
from lossgen import verify
from lossgen.api import derive_all
from lossgen.cli import main
from lossgen.emit import GeneratedFile

CHECKS = [
    "gradcheck",
    "gradgradcheck",
    "autograd",
    "interfaces",
    "kinks",
    "extremes",
    "fastpath",
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of specs/tutorial.py in a tmp project, built into generated/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "tutorial.py", tmp_path / "specs" / "tutorial.py")
    assert main(["build", "specs/tutorial.py", "-o", "generated"]) == 0
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_json(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code, out, err = run(capsys, "check", "specs/tutorial.py", "--json", *extra)
    assert err == ""
    return code, json.loads(out)


# --- all good ------------------------------------------------------------------------------------


def test_clean_project_text_report(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "check", "specs/tutorial.py")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "generated code is up to date"
    header = lines[1].split()
    assert header[0] == "loss" and header[1 : len(CHECKS) + 1] == CHECKS
    assert header[len(CHECKS) + 1 :] == ["max", "abs", "err", "max", "rel", "err"]
    row = lines[2].split()
    assert row[0] == "CustomLoss" and row[1:-2] == ["ok"] * len(CHECKS)
    assert float(row[-2]) < 1e-12 and float(row[-1]) < 1e-12
    # the columns line up: every cell starts where its header does
    for name in CHECKS:
        assert lines[2][lines[1].index(name)] in "oF"
    assert lines[-1] == "lossgen check: ok (7 checks, 0 failed)"


def test_clean_project_json_report(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(capsys)
    assert code == 0
    assert report["ok"] is True and report["checks"] == 7 and report["failed"] == 0
    assert report["drift"] == {
        "clean": True,
        "stale": [],
        "missing": [],
        "unexpected": [],
        "diffs": {},
    }
    assert [r["check"] for r in report["results"]] == CHECKS
    for result in report["results"]:
        assert set(result) == {
            "loss",
            "check",
            "ok",
            "max_abs_error",
            "max_rel_error",
            "detail",
        }
        assert result["loss"] == "CustomLoss" and result["ok"] is True


def test_check_api_returns_a_report(project: Path) -> None:
    report = verify.check(["specs/tutorial.py"], "generated", numeric=False)
    assert report.ok and report.drift is not None and report.drift.clean
    assert report.results == ()


def test_check_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(project / "generated")
    before = sorted(p.as_posix() for p in project.rglob("*"))
    code, report = check_json(capsys, "--no-numeric")
    assert code == 1 and sorted(report["drift"]["missing"]) == [
        "__init__.py",
        "custom_loss.py",
    ]
    assert sorted(p.as_posix() for p in project.rglob("*")) == before


# --- drift ---------------------------------------------------------------------------------------


def edit(path: Path, change: Callable[[bytes], bytes]) -> None:
    path.write_bytes(change(path.read_bytes()))


HAND_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "changed code": lambda b: b.replace(
        b"torch.sign(tmp0)", b"torch.sign(tmp0) * 0.5", 1
    ),
    "changed comment": lambda b: b.replace(
        b"do not edit by hand", b"edited by hand", 1
    ),
    "appended line": lambda b: b + b"print('hello')\n",
    "trailing whitespace": lambda b: b.replace(b"\n", b" \n", 1),
    "no final newline": lambda b: b.rstrip(b"\n"),
    "CRLF line endings": lambda b: b.replace(b"\n", b"\r\n"),
    "byte order mark": lambda b: b"\xef\xbb\xbf" + b,
    "invalid UTF-8": lambda b: b.replace(b"Elementwise", b"Elementwis\xe9", 1),
    "emptied": lambda b: b"",
}


@pytest.mark.parametrize("kind", list(HAND_EDITS))
def test_any_hand_edit_is_caught(
    project: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = project / "generated" / "custom_loss.py"
    edit(target, HAND_EDITS[kind])
    code, report = check_json(capsys, "--no-numeric")
    assert code == 1 and report["ok"] is False
    assert report["drift"]["stale"] == ["custom_loss.py"]
    assert report["drift"]["diffs"]["custom_loss.py"].strip()
    code, out, _ = run(capsys, "check", "specs/tutorial.py", "--no-numeric")
    assert code == 1
    assert "stale: custom_loss.py differs from what the specs generate" in out
    assert out.splitlines()[-1].endswith("generated code drifted)")


def test_the_diff_shows_the_edit(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(project / "generated" / "custom_loss.py", HAND_EDITS["changed code"])
    code, out, _ = run(capsys, "check", "specs/tutorial.py", "--no-numeric")
    assert code == 1
    assert "    --- generated/custom_loss.py (on disk)" in out
    assert "    +++ generated/custom_loss.py (generated)" in out
    removed = [line for line in out.splitlines() if line.startswith("    -  ")]
    added = [line for line in out.splitlines() if line.startswith("    +  ")]
    assert len(removed) == 1 and "torch.sign(tmp0) * 0.5" in removed[0]
    assert (
        len(added) == 1 and "* 0.5" not in added[0] and "torch.sign(tmp0)" in added[0]
    )


def test_long_diffs_are_cut_short_in_text_but_whole_in_json(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = project / "generated" / "custom_loss.py"
    edit(target, lambda b: b.replace(b"    ", b"  "))  # re-indents every line
    code, out, _ = run(capsys, "check", "specs/tutorial.py", "--no-numeric")
    assert code == 1
    assert "more diff lines (see --json)" in out
    shown = [line for line in out.splitlines() if line.startswith("    ")]
    assert len(shown) <= verify.MAX_DIFF_LINES + 1
    _, report = check_json(capsys, "--no-numeric")
    assert (
        len(report["drift"]["diffs"]["custom_loss.py"].splitlines())
        > verify.MAX_DIFF_LINES
    )


def test_missing_and_unexpected_files(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "generated" / "custom_loss.py").unlink()
    (project / "generated" / "old_loss.py").write_text(
        "# a loss removed from the spec\n"
    )
    code, report = check_json(capsys, "--no-numeric")
    assert code == 1
    assert report["drift"]["missing"] == ["custom_loss.py"]
    assert report["drift"]["unexpected"] == ["old_loss.py"]
    code, out, _ = run(capsys, "check", "specs/tutorial.py", "--no-numeric")
    assert "missing: custom_loss.py" in out
    assert "unexpected: old_loss.py (not generated by these specs)" in out


def test_a_changed_spec_is_drift(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = project / "specs" / "tutorial.py"
    spec.write_text(spec.read_text().replace('reduction="sum"', 'reduction="mean"'))
    code, report = check_json(capsys, "--no-numeric")
    assert code == 1 and report["drift"]["stale"] == ["custom_loss.py"]
    assert main(["build", "specs/tutorial.py"]) == 0
    code, report = check_json(capsys, "--no-numeric")
    assert code == 0


# --- numeric failures ----------------------------------------------------------------------------


def test_a_wrong_gradient_fails_the_numeric_checks(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a generator bug: the backward is off by a factor of 2, and generated/ matches it.
    real_generate = verify.generate_derived

    def buggy_generate(derived: list) -> tuple[GeneratedFile, ...]:
        return tuple(
            GeneratedFile(
                f.name,
                f.content.replace(
                    "tmp1 = weight * torch.sign(tmp0)",
                    "tmp1 = 2 * weight * torch.sign(tmp0)",
                ),
            )
            for f in real_generate(derived)
        )

    monkeypatch.setattr(verify, "generate_derived", buggy_generate)
    for file in buggy_generate(derive_all(["specs/tutorial.py"])):
        assert "2 * weight" in file.content or file.name == "__init__.py"
        (project / "generated" / file.name).write_text(file.content)
    code, out, err = run(capsys, "check", "specs/tutorial.py")
    assert code == 1 and err == ""
    assert "generated code is up to date" in out
    row = next(
        line.split() for line in out.splitlines() if line.startswith("CustomLoss")
    )
    verdicts = dict(zip(CHECKS, row[1 : len(CHECKS) + 1]))
    assert verdicts["gradcheck"] == "FAIL" and verdicts["autograd"] == "FAIL"
    assert verdicts["interfaces"] == "ok"  # all three interfaces share the bug
    assert "FAIL CustomLoss autograd: gradient 0: differs from autograd" in out
    assert out.splitlines()[-1].startswith("lossgen check: FAILED (7 checks, ")
    code, report = check_json(capsys)
    assert code == 1 and report["drift"]["clean"] is True
    failed = {r["check"] for r in report["results"] if not r["ok"]}
    assert {"gradcheck", "autograd"} <= failed
    assert report["failed"] == len(failed)
    autograd = next(r for r in report["results"] if r["check"] == "autograd")
    assert autograd["max_abs_error"] > 0.5


def test_a_wrong_fast_path_fails_the_fastpath_check(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generator bug in the fused body only: the readable Function is right, so only the
    # check of the fast path (which a user gets from 65536 elements on) can see it.
    real_generate = verify.generate_derived
    right = "grad_inputs = _sum_to(tmp2 * upstream, shape, inputs.shape)"
    wrong = "grad_inputs = _sum_to(2 * tmp2 * upstream, shape, inputs.shape)"

    def buggy_generate(derived: list) -> tuple[GeneratedFile, ...]:
        return tuple(
            GeneratedFile(f.name, f.content.replace(right, wrong))
            for f in real_generate(derived)
        )

    monkeypatch.setattr(verify, "generate_derived", buggy_generate)
    for file in buggy_generate(derive_all(["specs/tutorial.py"])):
        assert wrong in file.content or file.name == "__init__.py"
        (project / "generated" / file.name).write_text(file.content)
    code, report = check_json(capsys)
    assert code == 1 and report["drift"]["clean"] is True
    failed = [r for r in report["results"] if not r["ok"]]
    assert [r["check"] for r in failed] == ["fastpath"]
    assert failed[0]["detail"].startswith("gradient 0 (shapes 0): differs")


def test_spec_error_is_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "specs" / "broken.py").write_text(
        "from lossgen import Loss\nLoss('B', )\n"
    )
    code, out, err = run(
        capsys, "check", "specs/tutorial.py", "specs/broken.py", "--json"
    )
    assert code == 2 and out == ""
    assert (
        err.startswith("lossgen: error: specs/broken.py:2: ") and err.count("\n") == 1
    )
