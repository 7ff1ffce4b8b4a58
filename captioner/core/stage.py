"""Run a stage or command so that a CaptionerError (or an OS error) becomes one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from captioner.core.atomic import remove_stale
from captioner.core.errors import CaptionerError, printable


def run_main(main: Callable[[], None]) -> None:
    """Call `main()`; report a CaptionerError or an OS error (missing file, full disk) as one line, exit non-zero."""
    try:
        main()
    except CaptionerError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as exc:
        print(f"error: file not found: {printable(str(exc.filename or exc))}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {printable(where + (exc.strerror or str(exc).splitlines()[0]))}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def stage_args(description: str, inputs: Sequence[str], outputs: Sequence[str],
               argv: Sequence[str] | None = None, clean: bool = True, seed: bool = False) -> argparse.Namespace:
    """Parse a stage script's `--name PATH` options (all required; dvc.yaml gives them) into Paths, and with
    `seed` a required `--seed N` (an ensemble member's stage: dvc.yaml's `foreach` item).

    Before the stage writes anything, what an earlier killed run left beside its outputs is removed
    (unless `clean` is false: a process that writes none of the outputs leaves them alone).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, required=True, metavar="PATH", help="the params file (params.yaml)")
    for name in (*inputs, *outputs):
        role = "output" if name in outputs else "input"
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, metavar="PATH", help=role)
    if seed:
        parser.add_argument("--seed", type=int, required=True, metavar="N", help="the member's training seed")
    args = parser.parse_args(argv)
    removed = remove_stale(*(getattr(args, name) for name in outputs)) if clean else 0
    if removed:
        print(f"removed {removed} temporary file(s) left by an interrupted run", file=sys.stderr)
    return args
