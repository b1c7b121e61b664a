"""User-facing errors.

Anything the user can cause (bad file, bad flag, bad checkpoint) raises
HemosegError with a one-line message naming the file and the problem. The CLI
prints it without a traceback and exits non-zero; programmer errors still
raise normally so they are not hidden.
"""

from __future__ import annotations

from pathlib import Path


class HemosegError(Exception):
    """An error caused by input, reported to the user as one line."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        message = " ".join(str(message).split())  # force one line
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
