"""Run a stage or command so that a CaptionerError becomes one line on stderr and exit code 1."""

from __future__ import annotations

import sys
from typing import Callable

from captioner.errors import CaptionerError


def run_main(main: Callable[[], None]) -> None:
    """Call `main()`; report a CaptionerError (or a missing file) as one line and exit non-zero."""
    try:
        main()
    except CaptionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
