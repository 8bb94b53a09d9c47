"""A non-editable install works: the wheel ships the templates and the console script, and the
installed `lossgen build` generates code from a directory outside the repository.

The wheel build fetches hatchling from PyPI (pip's build isolation) unless it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lossgen
from conftest import ROOT

TEMPLATES = ("lossgen/templates/loss.py.jinja", "lossgen/templates/__init__.py.jinja")


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH, nothing can import lossgen from the checkout by accident.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "-w",
        str(out),
    ]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")  # no network needed then
    _run(command, cwd=out)
    (wheel,) = out.glob("lossgen-*.whl")
    return wheel


def test_wheel_ships_templates_and_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for template in TEMPLATES:
            assert template in names
            # byte-for-byte the checkout's templates
            source = ROOT / "templates" / Path(template).name
            assert archive.read(template) == source.read_bytes()
        (entry_points,) = [
            n for n in names if n.endswith(".dist-info/entry_points.txt")
        ]
        lines = archive.read(entry_points).decode().splitlines()
    assert "[console_scripts]" in lines
    assert "lossgen = lossgen.cli:main" in lines
    assert "lossgen/__init__.py" in names and "lossgen/printer.py" in names


def test_installed_lossgen_builds_outside_the_repository(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    # --system-site-packages finds torch, sympy, black and jinja2; the system pip installs
    # into the venv (sys.prefix is the venv's), so the venv needs no pip of its own.
    _run(
        [
            sys.executable,
            "-m",
            "venv",
            "--system-site-packages",
            "--without-pip",
            str(venv),
        ],
        cwd=tmp_path,
    )
    python = venv / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "specs" / "tutorial.py", work / "tutorial.py")

    where = _run(
        [str(python), "-c", "import lossgen; print(lossgen.__file__)"], cwd=work
    )
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv), installed  # not the checkout

    result = _run(
        [str(venv / "bin" / "lossgen"), "build", "tutorial.py", "-o", "out"], cwd=work
    )
    assert "wrote out/custom_loss.py" in result.stdout
    assert "wrote out/__init__.py" in result.stdout
    # the installed lossgen writes what this checkout's lossgen generates, byte for byte
    monkeypatch.chdir(work)
    expected = {f.name: f.content for f in lossgen.generate(["tutorial.py"])}
    written = {p.name: p.read_text() for p in (work / "out").iterdir()}
    assert written == expected
