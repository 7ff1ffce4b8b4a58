"""Feature extraction: every image of a folder through an encoder into one HDF5 file plus meta.json.

Used by the extract_features stage (`run_extraction`) and by `captioner predict` (`extract_features`).
Unreadable images are skipped and named with a reason, never fatal; outputs are written atomically.
The stage encodes the sorted images in pieces of PIECE_BATCHES batches and keeps each finished piece
in a resume folder beside the output, so an interrupted run picks up where it stopped and, because
every piece is encoded the same way either way, writes exactly the file an uninterrupted run would.
Keras places the encoder on a GPU when TensorFlow sees one. With `features.flip` every image is also
encoded mirrored left-right (the decoded, resized pixels flipped just before the encoder, so it works with
any encoder and output): a second dataset `flipped` in the same file, in the same row order.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np
from tqdm import tqdm

from captioner.core.atomic import atomic_dir, write_json
from captioner.vision.encoders import build_encoder, get_spec, output_shape, weights_id
from captioner.core.errors import CaptionerError
from captioner.vision.feature_store import FEATURES_FILE, FLIPPED, check_finite, feature_dtype, write_features
from captioner.vision.images import describe_failure, image_batches
from captioner.core.precision import resolve_precision
from captioner.vision.resume_store import ResumeStore, piece_key

META_FILE = "meta.json"
WARN_NAMES = 3
PIECE_BATCHES = 32


def encode_images(
    model: keras.Model, paths: list[Path], input_size: int, batch_size: int, dtype: np.dtype, progress: bool = True
) -> tuple[list[int], np.ndarray]:
    """Run `model` over the images in batches; return (indices of the decodable paths, their features in order)."""
    done, features, _ = encode_views(model, paths, input_size, batch_size, dtype, progress)
    return done, features


def encode_views(
    model: keras.Model, paths: list[Path], input_size: int, batch_size: int, dtype: np.dtype, progress: bool = True,
    flip: bool = False,
) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """`encode_images`, plus (if `flip`) the features of the same images mirrored left-right, else None.

    `predict_on_batch` reuses the model's compiled predict function: traced once per model, no per-call
    data-adapter overhead like `predict`. Each image is decoded once; its mirrored batch is a second call of
    the same shape, so the unmirrored features are exactly those of a run without `flip`.
    """
    features = np.empty((len(paths), *model.output.shape[1:]), dtype=dtype)
    flipped = np.empty_like(features) if flip else None
    done: list[int] = []
    with tqdm(total=len(paths), unit="img", desc=model.name, disable=not progress, file=sys.stderr) as bar:
        for indices, images in image_batches(paths, input_size, batch_size):
            start = len(done)
            features[start : start + len(indices)] = model.predict_on_batch(images)
            if flipped is not None:
                flipped[start : start + len(indices)] = model.predict_on_batch(keras.ops.flip(images, axis=2))
            done.extend(indices.numpy().tolist())
            bar.update(len(indices))
        bar.update(len(paths) - bar.n)
    return done, features[: len(done)], None if flipped is None else flipped[: len(done)]


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


def resume_folder(out_dir: Path) -> Path:
    """Where the stage keeps finished pieces while it runs: beside the output (`data/features.resume`)."""
    return out_dir.with_name(f"{out_dir.name}.resume")


def _settings(params_features: dict[str, Any], weights_key: str, input_size: int) -> dict[str, Any]:
    """Everything besides the images that a piece's features depend on; random weights never match a later run."""
    settings = {k: params_features[k] for k in ("encoder", "weights", "output", "batch_size")}
    settings.update(weights_id=weights_key, input_size=input_size, piece_batches=PIECE_BATCHES, format=2,
                    precision=resolve_precision(params_features["precision"]))
    if params_features["weights"] == "none":
        settings["run"] = uuid.uuid4().hex
    return settings


def _reusable(store: ResumeStore, key: str, piece: list[Path], shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether a stored piece may stand for encoding `piece` now; if it fails a check, one stderr line and it goes."""
    if not store.has(key):
        return False
    problem = store.problem(key, [p.name for p in piece], shape, dtype)
    if problem is not None:
        tqdm.write(f"warning: discarded {store.path(key)} (images {piece[0].name} to {piece[-1].name}): {problem}; "
                   f"encoding them again", file=sys.stderr)
        store.discard(key)
    return problem is None


def flipped_key(settings: dict[str, Any], piece: list[Path]) -> str:
    """The resume key of a piece's mirrored view (its unmirrored view keeps the key of a run without flip)."""
    return piece_key({**settings, "view": FLIPPED}, piece)


def _encode_pieces(
    paths: list[Path], params_features: dict[str, Any], settings: dict[str, Any], store: ResumeStore
) -> tuple[list[str], list[str], int]:
    """Make sure every piece of `paths` is in `store` (with `features.flip`, its mirrored view too, under
    `flipped_key`); return the pieces' keys, their mirrored views' keys (none without flip) and how many
    images were reused."""
    encoder, batch_size = params_features["encoder"], params_features["batch_size"]
    input_size, dtype = settings["input_size"], feature_dtype(params_features["output"])
    flip = params_features.get("flip", False)
    shape = output_shape(encoder, params_features["output"])
    per_piece = batch_size * PIECE_BATCHES
    model = None
    keys, flipped_keys, reused = [], [], 0
    with tqdm(total=len(paths), unit="img", desc=encoder, disable=None, file=sys.stderr) as bar:
        for start in range(0, len(paths), per_piece):
            piece = paths[start:start + per_piece]
            key = piece_key(settings, piece)
            views = [key, flipped_key(settings, piece)] if flip else [key]
            if all([_reusable(store, k, piece, shape, dtype) for k in views]):  # a list: every bad piece goes
                reused += len(piece)
            else:
                if model is None:
                    model = build_encoder(
                        encoder, params_features["weights"], params_features["output"], settings["precision"]
                    )
                done, features, flipped = encode_views(model, piece, input_size, batch_size, dtype, False, flip)
                names = [piece[i].name for i in done]
                ok = set(done)
                skipped = {piece[i].name: describe_failure(piece[i]) for i in range(len(piece)) if i not in ok}
                for view_key, rows in zip(views, [features, flipped]):
                    check_finite(f"{encoder} ({params_features['weights']} weights) on {piece[0].parent}", rows,
                                 names, hint="damaged encoder weights?")
                    store.save(view_key, names, rows, skipped)
            keys.append(key)
            flipped_keys += views[1:]
            bar.update(len(piece))
    return keys, flipped_keys, reused


def run_extraction(images_dir: Path, out_dir: Path, params_features: dict[str, Any]) -> dict[str, Any]:
    """Extract features of every image in `images_dir` into `out_dir`/features.h5 + meta.json; return meta.

    Finished pieces wait in `resume_folder(out_dir)` until the output is in place; a rerun after an
    interruption reuses them and says so in one line on stderr.
    """
    encoder, weights, output = params_features["encoder"], params_features["weights"], params_features["output"]
    if params_features["batch_size"] < 1:
        raise CaptionerError(f"features.batch_size must be at least 1, got {params_features['batch_size']}")
    spec = get_spec(encoder)
    paths = list_images(images_dir)
    weights_key = weights_id(encoder, weights)
    store = ResumeStore(resume_folder(out_dir))
    settings = _settings(params_features, weights_key, spec.input_size)
    keys, flipped_keys, reused = _encode_pieces(paths, params_features, settings, store)
    if reused:
        print(f"resumed: {reused} of {len(paths)} images were already encoded in {store.folder}", file=sys.stderr)
    names: list[str] = []
    skipped: dict[str, str] = {}
    for key in keys:
        piece_names, piece_skipped = store.names_and_skipped(key)
        names += piece_names
        skipped.update(piece_skipped)
    if not names:
        store.remove()
        raise CaptionerError(f"{images_dir}: none of the {len(paths)} files is a readable image")
    shape, dtype = output_shape(encoder, output), np.dtype(feature_dtype(output))  # every piece was checked for both
    meta = {
        "encoder": encoder,
        "weights": weights,
        "weights_id": weights_key,
        "output": output,
        "input_size": spec.input_size,
        "preprocessing": spec.preprocessing,
        "precision": resolve_precision(params_features["precision"]),
        "feature_shape": list(shape),
        "dtype": str(dtype),
        "num_images": len(names),
        "num_files": len(paths),
        "num_skipped": len(skipped),
        "skipped": skipped,
    }
    if flipped_keys:
        meta["flip"] = True  # absent without flip: a run without it writes what it wrote before flip existed
    flipped = {FLIPPED: (store.features(k) for k in flipped_keys)} if flipped_keys else None
    attrs = {k: meta[k] for k in ("encoder", "weights", "weights_id", "output", "input_size")}
    with atomic_dir(out_dir) as tmp:
        write_features(tmp / FEATURES_FILE, names, shape, dtype, (store.features(k) for k in keys), attrs,
                       flipped)
        write_json(tmp / META_FILE, meta)
    store.remove()
    if skipped:
        _warn_skipped(skipped, len(paths), out_dir / META_FILE)
    return meta
