"""Read the pipeline's JSON files, turning a missing or malformed file into a one-line error."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from captioner.core.errors import CaptionerError


def read_json(path: str | os.PathLike[str], what: str, stage: str | None = None) -> Any:
    """Load `path`; a missing file names `what` and the `dvc repro` stage that makes it, bad JSON its line."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: {what} not found (run `dvc repro{' ' + stage if stage else ''}`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise CaptionerError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    except OSError as exc:
        raise CaptionerError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
