"""The project's one error type: anything a user can cause (bad input, bad config, busy folder)."""


class TnbcError(Exception):
    """A user-facing problem; the CLI prints its message as one line and exits non-zero."""
