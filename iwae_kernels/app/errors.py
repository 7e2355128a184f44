"""The app's user errors."""


class UserError(Exception):
    """A mistake the user can fix (a bad option, an unusable file or folder); the CLI prints it on one line."""
