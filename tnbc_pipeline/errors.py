"""The project's one error type: anything a user can cause (bad input, bad config, busy folder)."""


MAX_MESSAGE = 400  # characters of one error line: a file name or value the user gave may be huge


class TnbcError(Exception):
    """A user-facing problem; the CLI prints its message as one line and exits non-zero."""


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` on one line of at most about `limit` characters: a long middle (a huge path or value the
    user gave) is cut, so the start (where) and the end (what is wrong) both stay."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    half = (limit - 30) // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"
