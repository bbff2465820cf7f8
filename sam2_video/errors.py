"""Errors meant for the user: one line that names the file and what was expected."""
from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user (a path, a file's content, a config value). The CLI prints it without a traceback."""
