"""Errors a user can fix (bad model directory, bad ids, bad flags): printed as one line, no traceback."""


class UserError(Exception):
    """An error caused by input the user can fix."""
