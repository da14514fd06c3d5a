"""Errors a user can cause: the CLI prints their message as one line and exits non-zero."""


class CftoolError(Exception):
    """A problem with the user's input, described in one line: which file, what was wrong, what to do."""

    exit_code = 1
