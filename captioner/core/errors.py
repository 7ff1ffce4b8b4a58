"""One exception type for every user-facing failure, so stages and the CLI can print it in one line."""


class CaptionerError(Exception):
    """A problem with the user's input or environment, reported as one line and a non-zero exit."""
