"""Option checks shared by the operators' commands (typer callbacks)."""

from __future__ import annotations

import math

import typer


def positive_seconds(value: float) -> float:
    """A `--timeout`: a positive, finite number of seconds (0 was reported as a proxy that
    did not answer within 0 s: the network blamed for an option)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter("must be a positive number of seconds")
    return value
