"""What the commands share of their command lines: `given`, the options a user gave as
settings overrides, and `CliError`, the one-line failure a command ends with."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1 or 2, no traceback."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def given(**overrides: object) -> dict[str, object]:
    """Only the options given on the command line, so the environment still fills the rest."""
    return {name: value for name, value in overrides.items() if value is not None}
