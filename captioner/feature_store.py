"""The on-disk feature file: one HDF5 file with every image's feature, keyed by image file name.

Layout: dataset `names` (N utf-8 strings) and dataset `features` (N, *feature_shape), row i belonging
to names[i]; file attributes carry the encoder description (name, output kind, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from captioner.atomic import atomic_path
from captioner.errors import CaptionerError

FEATURES_FILE = "features.h5"


def save_features(
    path: str | os.PathLike[str],
    names: list[str],
    features: np.ndarray,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write names and their features to `path` atomically."""
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names but {len(features)} feature rows")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("features", data=features)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value


def load_features(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read (names, features, attrs) from a feature file; a missing or malformed file is a CaptionerError."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: feature file not found (run `dvc repro extract_features`)")
    try:
        with h5py.File(path, "r") as f:
            names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["names"][()]]
            features = f["features"][()]
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise CaptionerError(f"{path}: not a captioner feature file ({exc})") from exc
    return names, features, attrs


def pool_grid(features: np.ndarray) -> np.ndarray:
    """Average a (N, h, w, C) grid over its spatial cells into (N, C) float32 vectors; vectors pass through."""
    if features.ndim == 2:
        return features.astype(np.float32, copy=False)
    return features.astype(np.float32).mean(axis=tuple(range(1, features.ndim - 1)))
