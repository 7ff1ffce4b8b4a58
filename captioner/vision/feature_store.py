"""The on-disk feature file: one HDF5 file with every image's feature, keyed by image file name.

Layout: dataset `names` (N utf-8 strings) and dataset `features` (N, *feature_shape), row i belonging
to names[i]; file attributes carry the encoder description (name, output kind, ...). `features` is
chunked by rows (about CHUNK_BYTES per chunk: one 7x7x1280 float16 grid row, or a few dozen pooled
vectors), so `FeatureReader` fetches a batch of rows without reading the rest of the file. A file extracted
with `features.flip` also holds dataset `flipped`: the features of the mirrored images, same shape and rows.

Every way in checks the numbers: a NaN or an infinity (a flipped bit, a bad encoder) would otherwise train a
NaN model that captions nothing, so `load_features`, `FeatureReader` (once per open, CHECK_BYTES at a time)
and `prepare_features` refuse such a file in one line naming its first bad rows and images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from captioner.core.atomic import atomic_path
from captioner.core.errors import CaptionerError
from captioner.vision.encoders import TAIL_OUTPUTS

FEATURES_FILE = "features.h5"
FEATURES, FLIPPED = "features", "flipped"  # the datasets of the images as they are and mirrored left-right
CHUNK_BYTES = 128 * 1024
CHECK_BYTES = 64 * 1024 * 1024  # rows read at once when a FeatureReader checks a file's numbers
SHOWN_ROWS = 3  # bad rows named in an error
FILE_HINT = "a damaged file? re-run `dvc repro -f extract_features`"


def finite_rows(block: np.ndarray) -> np.ndarray:
    """One bool per row (first axis) of `block`: True where every value is finite (no NaN, no infinity).

    float16 is tested on its exponent bits (all ones means NaN or infinity): four times numpy's isfinite.
    """
    flat = np.ascontiguousarray(block).reshape(len(block), int(np.prod(block.shape[1:], dtype=np.int64)))
    if flat.dtype == np.float16:
        return ((flat.view(np.uint16) & 0x7C00) != 0x7C00).all(axis=1)
    if flat.dtype.kind in "fc":
        return np.isfinite(flat).all(axis=1)
    return np.ones(len(flat), dtype=bool)


def nonfinite_error(source: str, bad_rows: Sequence[int], names: Sequence[str] | None = None,
                    hint: str = FILE_HINT) -> CaptionerError:
    """The one-line error for feature rows holding NaN or infinity: how many, the first few (with image names)."""
    shown = ", ".join(f"row {r} ({names[r]})" if names is not None else f"row {r}" for r in bad_rows[:SHOWN_ROWS])
    more = f" and {len(bad_rows) - SHOWN_ROWS} more" if len(bad_rows) > SHOWN_ROWS else ""
    return CaptionerError(f"{source}: {len(bad_rows)} feature rows hold NaN or infinite values: {shown}{more} ({hint})")


def check_finite(source: str, features: np.ndarray, names: Sequence[str] | None = None,
                 hint: str = FILE_HINT) -> None:
    """Refuse `features` (rows of `source`, named by `names`) if any value is NaN or infinite, in one line."""
    bad = np.flatnonzero(~finite_rows(features))
    if len(bad):
        raise nonfinite_error(source, [int(r) for r in bad], names, hint)


def row_chunks(feature_shape: Sequence[int], dtype: np.dtype) -> tuple[int, ...]:
    """HDF5 chunk shape for a feature dataset: whole rows, as many as fit in CHUNK_BYTES (at least one)."""
    row_bytes = int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return (max(1, CHUNK_BYTES // max(1, row_bytes)), *feature_shape)


def write_features(
    path: str | os.PathLike[str],
    names: list[str],
    feature_shape: Sequence[int],
    dtype: np.dtype,
    blocks: Iterable[np.ndarray],
    attrs: dict[str, Any] | None = None,
    views: dict[str, Iterable[np.ndarray]] | None = None,
) -> None:
    """Write names and their features, given as consecutive row blocks, to `path` atomically; `views` are
    further datasets of the same shape and row order (e.g. `flipped`), given the same way.

    Only one block is in memory at a time, so the file may be far larger than memory.
    """
    n = len(names)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            # the datasets stay open until the attributes are written: closing one earlier changes the file's
            # layout, and a file without views keeps the bytes of earlier versions
            written = [_write_rows(f, name, n, feature_shape, dtype, rows)
                       for name, rows in {FEATURES: blocks, **(views or {})}.items()]
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            del written


def _write_rows(f: h5py.File, name: str, n: int, feature_shape: Sequence[int], dtype: np.dtype,
                blocks: Iterable[np.ndarray]) -> h5py.Dataset:
    """Dataset `name` of `n` row-chunked feature rows, filled from consecutive row blocks; return it."""
    chunks = row_chunks(feature_shape, dtype) if n else None
    dset = f.create_dataset(name, shape=(n, *feature_shape), dtype=dtype,
                            chunks=(min(n, chunks[0]), *chunks[1:]) if chunks else None)
    what = "feature" if name == FEATURES else name
    start = 0
    for block in blocks:
        if start + len(block) > n:
            raise ValueError(f"{n} names but more {what} rows")
        dset[start:start + len(block)] = block
        start += len(block)
    if start != n:
        raise ValueError(f"{n} names but {start} {what} rows")
    return dset


def save_features(
    path: str | os.PathLike[str],
    names: list[str],
    features: np.ndarray,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write names and their features to `path` atomically."""
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names but {len(features)} feature rows")
    write_features(path, names, features.shape[1:], features.dtype, [features], attrs)


def _open(path: Path) -> h5py.File:
    """Open a feature file for reading; a missing or malformed file is a CaptionerError."""
    if not path.is_file():
        raise CaptionerError(f"{path}: feature file not found (run `dvc repro extract_features`)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CaptionerError(f"{path}: not a captioner feature file ({exc})") from exc
    if "names" not in f or "features" not in f:
        f.close()
        raise CaptionerError(f"{path}: not a captioner feature file (needs datasets 'names' and 'features')")
    return f


def _attrs(f: h5py.File) -> dict[str, Any]:
    """The file attributes as plain Python values."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def _names(f: h5py.File) -> list[str]:
    """The `names` dataset as Python strings."""
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["names"][()]]


def load_features(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read (names, features, attrs) from a feature file; a missing or malformed file, or NaN or infinite
    features, is a CaptionerError."""
    path = Path(path)
    with _open(path) as f:
        names, features, attrs = _names(f), f["features"][()], _attrs(f)
    check_finite(str(path), features, names)
    return names, features, attrs


def _check_file(source: str, dataset: h5py.Dataset, names: Sequence[str]) -> None:
    """Refuse a feature dataset with a NaN or an infinity, reading CHECK_BYTES of whole rows at a time."""
    row_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
    step = max(1, CHECK_BYTES // row_bytes)
    bad: list[int] = []
    for start in range(0, dataset.shape[0], step):
        bad += [start + int(r) for r in np.flatnonzero(~finite_rows(dataset[start:start + step]))]
    if bad:
        raise nonfinite_error(source, bad, names)


class FeatureReader:
    """Rows of a feature file on demand; memory holds the names and the rows asked for, never the whole file.

    Opening checks every value once (CHECK_BYTES at a time): a NaN or an infinity is a CaptionerError naming
    the first bad rows, before training or evaluation reads a batch. The HDF5 handle belongs to one process:
    it is opened on first use and opened anew in a forked child, never shared across a fork. Use as a context
    manager, or call `close()`. `dataset` FLIPPED reads the mirrored view of a file extracted with
    `features.flip` (`has_flipped` says whether it has one).
    """

    def __init__(self, path: str | os.PathLike[str], dataset: str = FEATURES) -> None:
        self.path = Path(path)
        self.dataset = dataset
        with _open(self.path) as f:
            if dataset not in f:
                raise CaptionerError(f"{self.path}: no '{dataset}' dataset (extract with features.flip: true)")
            self.names: list[str] = _names(f)
            self.shape: tuple[int, ...] = tuple(f[dataset].shape)
            self.dtype: np.dtype = f[dataset].dtype
            self.attrs: dict[str, Any] = _attrs(f)
            self.has_flipped: bool = FLIPPED in f
            if len(self.names) != self.shape[0]:
                raise CaptionerError(f"{self.path}: {len(self.names)} names but {self.shape[0]} "
                                     f"{'feature' if dataset == FEATURES else dataset} rows")
            if self.has_flipped and f[FLIPPED].shape != f[FEATURES].shape:
                raise CaptionerError(f"{self.path}: '{FLIPPED}' rows of shape {f[FLIPPED].shape} but "
                                     f"'{FEATURES}' of {f[FEATURES].shape}")
            _check_file(f"{self.path}" if dataset == FEATURES else f"{self.path} ('{dataset}')", f[dataset],
                        self.names)
        self._file: h5py.File | None = None
        self._pid = -1
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one row (e.g. (7, 7, 1280) for a grid, (1280,) for a vector)."""
        return self.shape[1:]

    def positions(self, names: Sequence[str]) -> np.ndarray:
        """Row indices of `names`; a name the file lacks is a CaptionerError naming it."""
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in self._index]
        if missing:
            raise CaptionerError(f"{self.path}: no features for {len(missing)} images (e.g. {missing[0]}); "
                                 f"run `dvc repro extract_features`")
        return np.array([self._index[n] for n in names], dtype=np.int64)

    def _features(self) -> h5py.Dataset:
        """This process's handle on the reader's dataset."""
        if self._file is None or self._pid != os.getpid():
            self._file = _open(self.path)
            self._pid = os.getpid()
        return self._file[self.dataset]

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The feature rows at `indices`, in that order (repeats allowed), with the file's dtype.

        Reads the distinct rows in increasing order, each run of consecutive rows as one slice (h5py's
        list indexing is about 100x slower), then puts them in the asked order.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1} in {self.path}")
        unique, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(unique), *self.feature_shape), dtype=self.dtype)
        dataset = self._features()
        starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        for begin, end in zip(starts, [*starts[1:], len(unique)]):
            out[begin:end] = dataset[unique[begin]:unique[end - 1] + 1]
        return out[inverse.reshape(-1)]

    def __getitem__(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """`reader[indices]` is `reader.rows(indices)`, so a reader stands in for an in-memory array of rows."""
        return self.rows(indices)

    def close(self) -> None:
        """Close this process's handle (a later `rows` opens it again)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PooledRows:
    """Rows of a grid feature source (array or FeatureReader) averaged over their cells as they are read."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape: tuple[int, ...] = (source.shape[0], source.shape[-1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return pool_grid(np.asarray(self.source[indices]))


def feature_dtype(output: str) -> np.dtype:
    """Storage dtype: float32 vectors, float16 grids (half the disk and memory, ample precision)."""
    return np.dtype(np.float32 if output == "pooled" else np.float16)


def pool_grid(features: np.ndarray) -> np.ndarray:
    """Average a (N, h, w, C) grid over its spatial cells into (N, C) float32 vectors; vectors pass through."""
    if features.ndim == 2:
        return features.astype(np.float32, copy=False)
    return features.astype(np.float32).mean(axis=tuple(range(1, features.ndim - 1)))


def prepare_features(features, decoder: str, source: str):
    """Features in the form a decoder takes: grids pooled for merge/inject; attention refuses pooled vectors, and
    only attention takes a file of stage6 or stage5 maps (its decoder runs the encoder's last stages on them).

    `features` is an array or a FeatureReader (rows read per batch; its numbers were checked when it opened);
    a reader's grids are pooled as rows are read. An array with a NaN or an infinity is a CaptionerError.
    """
    if isinstance(features, np.ndarray):
        check_finite(source, features, hint="from a damaged encoder or feature file")
    output = features.attrs.get("output") if isinstance(features, FeatureReader) else None
    if output in TAIL_OUTPUTS and decoder != "attention":
        raise CaptionerError(f"{source}: holds {output} maps, which only the attention decoder takes "
                             f"(set train.decoder: attention, or features.output: grid)")
    if decoder == "attention":
        if len(features.shape) != 4:
            raise CaptionerError(
                f"{source}: train.decoder attention needs grid features but these are pooled vectors "
                f"of shape {features.shape[1:]} (set features.output: grid)"
            )
        return features
    if isinstance(features, np.ndarray):
        return pool_grid(features)
    return PooledRows(features) if len(features.shape) == 4 else features
