"""Errors shared across mair's commands."""


class CommandError(Exception):
    """A user-facing error: the ``mair`` command prints it as one line without a traceback, exit status 2."""
