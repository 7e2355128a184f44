"""The app's user errors."""


class UserError(Exception):
    """A mistake the user can fix (a bad option, an unusable file or folder); the CLI prints it on one line."""


class OptionError(UserError):
    """A bad command-line option: every process of a torchrun run finds it alike, so only rank 0 reports it."""
