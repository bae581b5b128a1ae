"""The one error family a user's mistake raises: the CLI prints it as one line and exits 2.

Every error that means "what you asked for cannot be done, and here is what to do" derives
from :class:`LapoError`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LapoError(Exception):
    """A user-facing error whose message says what is wrong and what to do."""


class UserError(LapoError):
    """A request that cannot be met (a bad option, a missing input); printed as one line."""


class ConfigError(LapoError, ValueError):
    """A configuration value out of range, or an unknown preset."""


class FieldError(ConfigError):
    """One config field's value is not one it accepts: ``field`` names it (dotted when nested,
    ``quantizer.decay``), ``problem`` says what it must be. The CLI prints it with the field's
    ``--option`` in place of its name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem
