"""Errors a user can cause, turned by the CLI into one line and exit code 2, and the one kind
that says edvit itself is at fault (`InternalError`).

Every error names where the bad value came from (file, field, value) so a person can fix it
without reading a traceback.
"""

from __future__ import annotations

from typing import Any


class EdvitError(Exception):
    """Base of every error edvit raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.field = field
        self.value = value

    def one_line(self) -> str:
        """`file: field=value: message`, leaving out the parts that are unknown."""
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.field:
            shown = self.field if self.value is None else f"{self.field}={_short(self.value)}"
            parts.append(shown)
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.one_line()


class InputError(EdvitError):
    """A file, field or argument the user gave is malformed or out of range."""


class InternalError(EdvitError):
    """Something inside edvit went wrong that no input should cause (a bug to report); the CLI
    says so in one line with exit code 70 (EX_SOFTWARE)."""

    exit_code = 70


class ProfileMismatchError(InputError):
    """A profile does not belong to the model or schema version it is used with."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
