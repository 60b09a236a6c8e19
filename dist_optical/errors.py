"""The project's own errors: a user mistake or a damaged input, reported by the CLI as one line that
names the file, key or folder and what was expected (no traceback)."""


class UserError(Exception):
    """A mistake the user can fix from the message alone."""
