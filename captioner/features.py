"""Feature extraction: every image of a folder through an encoder into one HDF5 file plus meta.json.

Used by the extract_features stage (`run_extraction`) and by `captioner predict` (`extract_features`).
Unreadable images are skipped and named with a reason, never fatal; outputs are written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
from tqdm import tqdm

from captioner.atomic import atomic_dir, write_json
from captioner.encoders import build_encoder, get_spec, weights_id
from captioner.errors import CaptionerError
from captioner.feature_store import FEATURES_FILE, save_features
from captioner.images import describe_failure, image_batches

META_FILE = "meta.json"
WARN_NAMES = 3


def feature_dtype(output: str) -> np.dtype:
    """Storage dtype: float32 vectors, float16 grids (half the disk and memory, ample precision)."""
    return np.dtype(np.float32 if output == "pooled" else np.float16)


def encode_images(
    model: keras.Model, paths: list[Path], input_size: int, batch_size: int, dtype: np.dtype, progress: bool = True
) -> tuple[list[int], np.ndarray]:
    """Run `model` over the images in batches; return (indices of the decodable paths, their features in order).

    `predict_on_batch` reuses the model's compiled predict function: traced once per model, no per-call
    data-adapter overhead like `predict`.
    """
    features = np.empty((len(paths), *model.output.shape[1:]), dtype=dtype)
    done: list[int] = []
    with tqdm(total=len(paths), unit="img", desc=model.name, disable=not progress, file=sys.stderr) as bar:
        for indices, images in image_batches(paths, input_size, batch_size):
            start = len(done)
            features[start : start + len(indices)] = model.predict_on_batch(images)
            done.extend(indices.numpy().tolist())
            bar.update(len(indices))
        bar.update(len(paths) - bar.n)
    return done, features[: len(done)]


def extract_features(
    paths: list[Path],
    encoder: str,
    weights: str,
    output: str,
    batch_size: int,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Encode images; return (names that worked, their features in that order, {skipped name: reason})."""
    if batch_size < 1:
        raise CaptionerError(f"features.batch_size must be at least 1, got {batch_size}")
    spec = get_spec(encoder)
    model = build_encoder(encoder, weights, output)
    done, features = encode_images(model, paths, spec.input_size, batch_size, feature_dtype(output), progress)
    ok = set(done)
    skipped = {paths[i].name: describe_failure(paths[i]) for i in range(len(paths)) if i not in ok}
    return [paths[i].name for i in done], features, skipped


def list_images(images_dir: Path) -> list[Path]:
    """Every visible regular file of the folder, sorted by name (non-images are reported as skipped later)."""
    if not images_dir.is_dir():
        raise CaptionerError(f"{images_dir}: image folder not found (run `dvc repro download` first)")
    paths = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise CaptionerError(f"{images_dir}: no image files")
    return paths


def _warn_skipped(skipped: dict[str, str], total: int, meta_path: Path) -> None:
    """One stderr line: how many images were skipped, the first few names and reasons, where the rest are."""
    shown = "; ".join(f"{name} ({reason})" for name, reason in list(skipped.items())[:WARN_NAMES])
    more = f"; {len(skipped) - WARN_NAMES} more" if len(skipped) > WARN_NAMES else ""
    print(f"warning: skipped {len(skipped)} of {total} images: {shown}{more} (all in {meta_path})",
          file=sys.stderr)


def run_extraction(images_dir: Path, out_dir: Path, params_features: dict[str, Any]) -> dict[str, Any]:
    """Extract features of every image in `images_dir` into `out_dir`/features.h5 + meta.json; return meta."""
    encoder, weights, output = params_features["encoder"], params_features["weights"], params_features["output"]
    spec = get_spec(encoder)
    paths = list_images(images_dir)
    names, features, skipped = extract_features(paths, encoder, weights, output, params_features["batch_size"])
    if not names:
        raise CaptionerError(f"{images_dir}: none of the {len(paths)} files is a readable image")
    meta = {
        "encoder": encoder,
        "weights": weights,
        "weights_id": weights_id(encoder, weights),
        "output": output,
        "input_size": spec.input_size,
        "preprocessing": spec.preprocessing,
        "feature_shape": list(features.shape[1:]),
        "dtype": str(features.dtype),
        "num_images": len(names),
        "num_files": len(paths),
        "num_skipped": len(skipped),
        "skipped": skipped,
    }
    attrs = {k: meta[k] for k in ("encoder", "weights", "weights_id", "output", "input_size")}
    with atomic_dir(out_dir) as tmp:
        save_features(tmp / FEATURES_FILE, names, features, attrs)
        write_json(tmp / META_FILE, meta)
    if skipped:
        _warn_skipped(skipped, len(paths), out_dir / META_FILE)
    return meta
