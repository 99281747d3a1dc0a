"""Errors every tool reports the same way (click's conventions: usage 2, failures 1)."""

from __future__ import annotations

import click


class TracewheelError(click.ClickException):
    """A failure the user can act on; printed as one line, exit status 1."""

    exit_code = 1


class DataError(TracewheelError):
    """Bad input data. The message names the file, the line and the problem."""

    def __init__(self, source: str, line: int | None, problem: str, hint: str | None = None):
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        message = f"{where}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class RecordError(ValueError):
    """A record that does not follow its contract; the reader adds file and line."""
