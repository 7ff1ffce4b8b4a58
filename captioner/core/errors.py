"""One exception type for every user-facing failure, so stages and the CLI can print it in one line."""


class CaptionerError(Exception):
    """A problem with the user's input or environment, reported as one line and a non-zero exit."""


def printable(text: str) -> str:
    """`text` with every non-printable character (NUL, newline, escape, an undecodable byte of a file name) written
    as a backslash escape, so a file name can neither break a one-line message nor drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
