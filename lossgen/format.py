"""Stage 6, format: black, so generated files read like hand-written ones and diff cleanly."""

from __future__ import annotations

import black

from lossgen.errors import LossgenError


def format_source(source: str, *, origin: str) -> str:
    """black-format generated source; a failure here is a lossgen bug, reported with its origin."""
    try:
        return black.format_str(
            source, mode=black.Mode(target_versions={black.TargetVersion.PY310})
        )
    except black.InvalidInput as error:
        raise LossgenError(
            f"{origin}: generated code does not parse (a lossgen bug): {error}"
        ) from error
