"""Finished pieces of a feature extraction, kept on disk so an interrupted run resumes where it stopped.

Each piece (a run of consecutive images) is one `.npz` file named by a key: a hash of the extraction
settings and of every image's name and bytes in the piece. A piece is reused only when all of these
match, so a resumed run gives exactly what an uninterrupted one would. Pieces are written atomically;
a run killed mid-write leaves at most a temporary file, which is never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from captioner.core.atomic import atomic_path
from captioner.core.errors import CaptionerError

READ_BYTES = 1 << 20


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while block := f.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def piece_key(settings: dict[str, Any], paths: list[Path]) -> str:
    """The key of a piece: the extraction settings plus each image's name and content."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=20)
    for path in paths:
        digest.update(f"\0{path.name}\0{file_digest(path)}".encode())
    return digest.hexdigest()


class ResumeStore:
    """A folder of finished extraction pieces: names, features and skipped images (with reasons) per key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def has(self, key: str) -> bool:
        """Whether the piece `key` is finished."""
        return self._path(key).is_file()

    def save(self, key: str, names: list[str], features: np.ndarray, skipped: dict[str, str]) -> None:
        """Store a finished piece atomically."""
        with atomic_path(self._path(key)) as tmp, tmp.open("wb") as f:
            np.savez(f, names=np.array(names, dtype=str), features=features,
                     skipped_names=np.array(list(skipped), dtype=str),
                     skipped_reasons=np.array(list(skipped.values()), dtype=str))

    def _load(self, key: str, *fields: str) -> list[np.ndarray]:
        """Fields of a stored piece; a damaged file is a one-line error saying how to start afresh."""
        try:
            with np.load(self._path(key), allow_pickle=False) as piece:
                return [piece[name] for name in fields]
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerError(f"{self._path(key)}: damaged resume file ({exc}); delete {self.folder} "
                                 f"and run again") from exc

    def names_and_skipped(self, key: str) -> tuple[list[str], dict[str, str]]:
        """The decoded image names of a piece and its skipped images with reasons."""
        names, skipped_names, reasons = self._load(key, "names", "skipped_names", "skipped_reasons")
        return [str(n) for n in names], {str(n): str(r) for n, r in zip(skipped_names, reasons)}

    def features(self, key: str) -> np.ndarray:
        """The feature rows of a piece."""
        return self._load(key, "features")[0]

    def remove(self) -> None:
        """Delete the folder and every piece in it (after the full result is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
