"""Errors that carry a source location, so every message points at the spec line to fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """A line in a spec file: where a Loss (or another spec object) was declared."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class LossgenError(Exception):
    """Base class of every error lossgen reports to a user (exit code 2 in the CLI)."""


class SpecError(LossgenError):
    """A spec file that cannot be turned into code: bad syntax, bad names, unsupported math."""

    def __init__(
        self,
        message: str,
        *,
        location: SourceLocation | None = None,
        loss: str | None = None,
    ) -> None:
        self.message = message
        self.location = location
        self.loss = loss
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        which = f"loss {self.loss!r}: " if self.loss else ""
        return f"{where}{which}{self.message}"

    def at(self, location: SourceLocation, loss: str | None) -> SpecError:
        """The same error, placed at a location (keeps a location it already has)."""
        return SpecError(
            self.message,
            location=self.location or location,
            loss=self.loss or loss,
        )
