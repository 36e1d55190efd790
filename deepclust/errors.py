"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (unknown name, missing data, bad k). The CLI
prints its message as a single line and exits with status 2 instead of a traceback. Messages
say what was wrong and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by user input; printed as one line, exit code 2."""


def unknown_name(kind: str, name: str, valid: Iterable[str], hint: str = "") -> UserError:
    """Build the standard "unknown X" error with a did-you-mean and the valid choices."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    extra = f"; {hint}" if hint else ""
    return UserError(f"unknown {kind} '{name}'{guess}; valid: {', '.join(valid)}{extra}")
