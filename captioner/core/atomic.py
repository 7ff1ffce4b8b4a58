"""Write files and folders atomically: to a temporary sibling first, then rename into place.

A crash or a bad input half-way through never leaves a half-written output behind. Temporary names are
`.<output name>.tmp-<random>` beside the output, so the next run of the stage finds and removes what a
killed run left (`remove_stale`). Outputs get the user's umask, like any file the user creates.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from captioner.core.errors import CaptionerError

TMP_MARK = ".tmp-"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_WORDS = ("No space left", "Disk quota exceeded", "File too large")


def temp_sibling(target: Path, label: str = "") -> Path:
    """A fresh, recognisable temporary name beside `target`: `.<name>.tmp-[label-]<random>`."""
    return target.with_name(f".{target.name}{TMP_MARK}{label + '-' if label else ''}{secrets.token_hex(4)}")


def stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Temporaries that earlier writes of `target` left beside it (and, for a folder, of the files in it)."""
    target = Path(target)
    found = list(target.parent.glob(f".{glob.escape(target.name)}{TMP_MARK}*"))
    if target.is_dir():
        found += target.glob(f".*{TMP_MARK}*")
    return sorted(found)


def remove_stale(*targets: str | os.PathLike[str]) -> int:
    """Remove what killed runs left beside each of `targets`; return how many leftovers were removed."""
    removed = 0
    for target in targets:
        for leftover in stale_temps(target):
            _remove(leftover)
            removed += 1
    return removed


def _disk_full(exc: OSError) -> bool:
    """Whether `exc` means the disk (or the user's quota or file-size limit) is full."""
    return exc.errno in _DISK_FULL or any(words in str(exc) for words in _DISK_FULL_WORDS)


def _reason(exc: OSError) -> str:
    """The OS's short description of `exc`."""
    return exc.strerror or str(exc).splitlines()[0]


def _remove(path: Path) -> None:
    """Remove a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _refuse_if_disk_full(target: Path, exc: OSError) -> None:
    """A full disk (or quota, or file-size limit) while writing `target` becomes one CaptionerError line."""
    if _disk_full(exc):
        raise CaptionerError(f"{target}: cannot write: {_reason(exc)} (free some space and re-run)") from exc


@contextlib.contextmanager
def _beside(target: str | os.PathLike[str], create: Callable[[Path], None]) -> Iterator[tuple[Path, Path]]:
    """Yield (target, a new temporary beside it made by `create`); a full disk becomes one line; the temporary goes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    create(tmp)
    try:
        yield target, tmp
    except OSError as exc:
        _refuse_if_disk_full(target, exc)
        raise
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; rename it onto `target` only if the block succeeds."""
    # mode 0o666 minus the umask
    with _beside(target, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))) as (final, tmp):
        yield tmp
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; swap it in for `target` only if the block succeeds."""
    with _beside(target, lambda p: os.mkdir(p, 0o777)) as (final, tmp):  # mode 0o777 minus the umask
        yield tmp
        if final.exists():
            old = temp_sibling(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a work folder beside `target` (named like its temporaries, so `remove_stale` finds it); remove it after.
    A full disk (or quota, or file-size limit) while working in it is one line naming the file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = temp_sibling(target, "scratch")
    os.mkdir(scratch, 0o700)
    try:
        yield scratch
    except OSError as exc:
        if _disk_full(exc):
            raise CaptionerError(f"{exc.filename or scratch}: cannot write: {_reason(exc)} (free some space "
                                 f"beside {target} and re-run)") from exc
        raise
    finally:
        _remove(scratch)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `target` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def first_nonfinite(data: Any, where: str = "") -> tuple[str, float] | None:
    """(path such as `scst_val_cider[2]`, value) of the first NaN or infinite float in `data`, or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (where or "the value", data)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found:
            return found
    return None


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented strict JSON to `target` atomically; NaN or infinity is a one-line error naming
    the file and key (JSON has no such numbers: a bare `NaN` breaks every reader but Python's)."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        found = first_nonfinite(data)
        if found is None:
            raise
        raise CaptionerError(f"{target}: refusing to write {found[0]} = {found[1]} "
                             f"(JSON has no NaN or infinity)") from exc
    write_text(target, text + "\n")
