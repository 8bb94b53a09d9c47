"""Stage 1, spec: import spec files and collect their Loss declarations, in order.

A spec is Python and is executed as such. Every failure here becomes a SpecError that names the
spec file and line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from lossgen.errors import SourceLocation, SpecError
from lossgen.vocabulary import Loss


@dataclass(frozen=True)
class SpecFile:
    """A loaded spec: the path to show in messages and headers, and its losses in order."""

    display_path: str
    losses: tuple[Loss, ...]


def display_path(path: Path) -> str:
    """The path as a user would type it: relative to the current directory where possible."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(resolved, Path.cwd().resolve())).as_posix()


def load_spec(path: str | os.PathLike[str]) -> SpecFile:
    """Execute one spec file and return its Loss objects in declaration order."""
    spec_path = Path(path)
    shown = display_path(spec_path)
    if not all(c.isprintable() for c in shown):
        # The path goes into generated headers: a newline in it would start a line of code.
        raise SpecError(
            f"spec file name {shown!r} contains control characters; rename it"
        )
    if not spec_path.is_file():
        what = "is a directory, not a spec file" if spec_path.is_dir() else "not found"
        raise SpecError(f"spec file {what}", location=SourceLocation(shown, 0))
    module = _execute(spec_path, shown)
    losses = tuple(value for value in vars(module).values() if isinstance(value, Loss))
    for loss in losses:
        loss.location = _relocate(loss.location, spec_path, shown)
    if not losses:
        raise SpecError(
            "no Loss(...) found at module level", location=SourceLocation(shown, 1)
        )
    seen: dict[str, Loss] = {}
    for loss in losses:
        if loss.name in seen:
            first = seen[loss.name].location.line
            raise SpecError(
                f"duplicate loss name (first declared on line {first})",
                location=loss.location,
                loss=loss.name,
            )
        seen[loss.name] = loss
    return SpecFile(shown, losses)


def _execute(spec_path: Path, shown: str) -> object:
    module_name = f"_lossgen_spec_{abs(hash(spec_path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, spec_path)
    if loader_spec is None or loader_spec.loader is None:
        raise SpecError("not a Python file", location=SourceLocation(shown, 0))
    module = importlib.util.module_from_spec(loader_spec)
    # Let the spec import helpers that sit next to it, as `python spec.py` would.
    sys.path.insert(0, str(spec_path.resolve().parent))
    # Loading a spec must leave the disk as it was: no __pycache__ beside it.
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as error:
        where = shown
        if error.filename and Path(error.filename).resolve() != spec_path.resolve():
            where = display_path(Path(error.filename))  # in a helper the spec imports
        raise SpecError(
            f"syntax error: {error.msg}",
            location=SourceLocation(where, error.lineno or 0),
        ) from error
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        # A spec is arbitrary Python: any failure is the spec's, sys.exit() in it included.
        line = _line_in(error, spec_path)
        message = (f"{type(error).__name__}: {error}".strip().splitlines() or [""])[0]
        raise SpecError(
            f"error while running the spec: {message}",
            location=SourceLocation(shown, line),
        ) from error
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
        sys.path.remove(str(spec_path.resolve().parent))
    return module


def _line_in(error: BaseException, spec_path: Path) -> int:
    """The last line of the spec file that the traceback passes through."""
    target = spec_path.resolve()
    line = 0
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == target:
            line = frame.lineno or 0
    return line


def _relocate(location: SourceLocation, spec_path: Path, shown: str) -> SourceLocation:
    if Path(location.path).resolve() == spec_path.resolve():
        return SourceLocation(shown, location.line)
    return SourceLocation(display_path(Path(location.path)), location.line)
