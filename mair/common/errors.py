"""Errors shared across mair's commands."""

from __future__ import annotations

import os


class CommandError(Exception):
    """A user-facing error: the ``mair`` command prints it as one line without a traceback, exit status 2."""


class DownloadError(RuntimeError):
    """A file could not be fetched from any of its sources."""


class EvaluationError(Exception):
    """A user-facing evaluation failure (missing data or weights, weights of another architecture, ...)."""


def not_a_file_reason(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be read as a regular file: ``no such file``, or what it is instead (a folder, a FIFO...)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file" if kind != "not a regular file" else "is not a regular file"


def missing_weights_message(path: str | os.PathLike[str]) -> str:
    """``weights file PATH not found``, or what PATH is instead of a file."""
    reason = not_a_file_reason(path)
    return f"weights file {path} not found" if reason == "no such file" else f"weights file {path} {reason}"
