"""Finished pieces of a feature extraction, kept on disk so an interrupted run resumes where it stopped.

Each piece (a run of consecutive images) is one `.npz` file named by a key: a hash of the extraction
settings and of every image's name and bytes in the piece. A piece is reused only when all of these
match, so a resumed run gives exactly what an uninterrupted one would. Pieces are written atomically;
a run killed mid-write leaves at most a temporary file, which is never read.

The folder is trusted no further than its checks: before reuse, a piece must hold exactly the images of its
part of the folder in order (the rest named as skipped), rows of the expected shape and dtype, one per
name, finite numbers, and the SHA-256 its writer recorded over all of it and its key. A piece that fails is
discarded and encoded again; it never reaches the feature file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner.core.atomic import atomic_path
from captioner.core.errors import CaptionerError
from captioner.vision.feature_store import finite_rows

READ_BYTES = 1 << 20
FIELDS = ("names", "features", "skipped_names", "skipped_reasons", "checksum")


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


def piece_checksum(key: str, names: Sequence[str], features: np.ndarray, skipped: dict[str, str]) -> str:
    """SHA-256 of everything a piece holds, and of its key (a piece copied under another key does not match)."""
    digest = hashlib.sha256(json.dumps([key, list(names), features.dtype.str, list(features.shape),
                                        sorted(skipped.items())]).encode())
    digest.update(np.ascontiguousarray(features).data)
    return digest.hexdigest()


@dataclass
class Piece:
    """A stored piece: the encoded images' names and features, and the skipped images with reasons."""

    names: list[str]
    features: np.ndarray
    skipped: dict[str, str]


class UnusablePiece(Exception):
    """A stored piece that fails a check; the message says why."""


def _strings(array: np.ndarray, field: str) -> list[str]:
    """A stored one-dimensional string array as Python strings."""
    if array.ndim != 1 or array.dtype.kind != "U":
        raise UnusablePiece(f"'{field}' is not a list of names")
    return [str(n) for n in array]


def _check(piece: Piece, images: Sequence[str], feature_shape: Sequence[int], dtype: np.dtype) -> None:
    """Raise UnusablePiece unless `piece` is what encoding `images` gives: names, shape, dtype, finite numbers."""
    skipped = set(piece.skipped)
    expected = [name for name in images if name not in skipped]
    if not skipped <= set(images) or len(piece.skipped) + len(piece.names) != len(images):
        raise UnusablePiece("its skipped images are not images of this piece")
    if piece.names != expected:  # as many names as expected (checked above): some differ
        i = next(i for i, (name, wanted) in enumerate(zip(piece.names, expected)) if name != wanted)
        raise UnusablePiece(f"its names are not the images of this piece in order (name {i} is "
                            f"{piece.names[i]!r}, expected {expected[i]!r})")
    shape = (len(expected), *(int(d) for d in feature_shape))
    if piece.features.shape != shape:
        raise UnusablePiece(f"features of shape {piece.features.shape}, expected {shape}")
    if piece.features.dtype != np.dtype(dtype):
        raise UnusablePiece(f"features of dtype {piece.features.dtype}, expected {np.dtype(dtype)}")
    bad = np.flatnonzero(~finite_rows(piece.features))
    if len(bad):
        raise UnusablePiece(f"{len(bad)} rows hold NaN or infinite values (first: {piece.names[bad[0]]})")


class ResumeStore:
    """A folder of finished extraction pieces: names, features and skipped images (with reasons) per key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        """The file of the piece `key`."""
        return self.folder / f"{key}.npz"

    def has(self, key: str) -> bool:
        """Whether the piece `key` is finished."""
        return self.path(key).is_file()

    def save(self, key: str, names: list[str], features: np.ndarray, skipped: dict[str, str]) -> None:
        """Store a finished piece atomically, with the checksum that later runs check before reusing it."""
        with atomic_path(self.path(key)) as tmp, tmp.open("wb") as f:
            np.savez(f, names=np.array(names, dtype=str), features=features,
                     skipped_names=np.array(list(skipped), dtype=str),
                     skipped_reasons=np.array(list(skipped.values()), dtype=str),
                     checksum=np.array(piece_checksum(key, names, features, skipped)))

    def _read(self, key: str) -> tuple[Piece, np.ndarray]:
        """The stored piece `key` and the checksum recorded with it, if it reads as one; else UnusablePiece."""
        try:
            with np.load(self.path(key), allow_pickle=False) as stored:
                missing = [name for name in FIELDS if name not in stored.files]
                if missing:
                    raise UnusablePiece(f"it lacks {', '.join(missing)}")
                arrays = {name: stored[name] for name in FIELDS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # not an npz, cut short, pickled objects
            raise UnusablePiece(f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
                from exc
        names = _strings(arrays["names"], "names")
        skipped_names = _strings(arrays["skipped_names"], "skipped_names")
        reasons = _strings(arrays["skipped_reasons"], "skipped_reasons")
        if len(reasons) != len(skipped_names) or len(set(skipped_names)) != len(skipped_names):
            raise UnusablePiece("its skipped images and reasons do not pair up")
        piece = Piece(names, arrays["features"], dict(zip(skipped_names, reasons)))
        if piece.features.ndim < 1 or len(piece.features) != len(names):
            raise UnusablePiece(f"{len(piece.features) if piece.features.ndim else 0} feature rows for "
                                f"{len(names)} names")
        return piece, arrays["checksum"]

    @staticmethod
    def _verify(key: str, piece: Piece, recorded: np.ndarray) -> Piece:
        """`piece` if it matches the checksum recorded with it; else UnusablePiece."""
        if recorded.shape != () or str(recorded) != piece_checksum(key, piece.names, piece.features, piece.skipped):
            raise UnusablePiece("its checksum does not match its contents (changed after it was written)")
        return piece

    def problem(self, key: str, images: Sequence[str], feature_shape: Sequence[int], dtype: np.dtype) -> str | None:
        """Why the stored piece `key` may not stand for encoding `images` (names in order) now; None if it may."""
        try:
            piece, recorded = self._read(key)
            _check(piece, images, feature_shape, dtype)
            self._verify(key, piece, recorded)
        except UnusablePiece as exc:
            return str(exc)
        return None

    def discard(self, key: str) -> None:
        """Delete the stored piece `key`."""
        self.path(key).unlink(missing_ok=True)

    def load(self, key: str) -> Piece:
        """A stored piece, checked against its checksum; damage is a one-line error saying how to start afresh."""
        try:
            return self._verify(key, *self._read(key))
        except UnusablePiece as exc:
            raise CaptionerError(f"{self.path(key)}: damaged resume file ({exc}); delete {self.folder} "
                                 f"and run again") from exc

    def names_and_skipped(self, key: str) -> tuple[list[str], dict[str, str]]:
        """The image names of a piece and its skipped images with reasons (read without its features: call
        after `problem` passed it or this run wrote it; `features` checks the checksum again)."""
        try:
            with np.load(self.path(key), allow_pickle=False) as stored:
                names, skipped, reasons = (stored[n] for n in ("names", "skipped_names", "skipped_reasons"))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise CaptionerError(f"{self.path(key)}: damaged resume file ({exc}); delete {self.folder} "
                                 f"and run again") from exc
        return [str(n) for n in names], {str(n): str(r) for n, r in zip(skipped, reasons)}

    def features(self, key: str) -> np.ndarray:
        """The feature rows of a piece."""
        return self.load(key).features

    def remove(self) -> None:
        """Delete the folder and every piece in it (after the full result is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
