"""The evaluate stage: caption every image of a split, score BLEU-1..4 / CIDEr-D, write predictions and a figure."""

from __future__ import annotations

import csv
import io
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from captioner.core.atomic import write_json, write_text
from captioner.data.corpus import read_captions, read_splits
from captioner.data.datasets.raw import SPLITS
from captioner.core.errors import CaptionerError
from captioner.core.params import where
from captioner.vision.feature_store import FEATURES_FILE, FLIPPED, FeatureReader

if TYPE_CHECKING:
    from captioner.serving.api import Caption

ATTENTION_SAMPLES = 3
_READ_CHUNK = 1000  # images whose feature rows are read and captioned at a time
ATTENTION_WORDS = 7


def split_images(splits_path: str | os.PathLike[str], split: str) -> list[str]:
    """Image names of `split` from splits.json; an unknown or empty split is a one-line error."""
    splits_path = Path(splits_path)
    if split not in SPLITS:
        raise CaptionerError(f"{where('evaluate.split')}: evaluate.split must be one of {', '.join(SPLITS)}, got {split!r}")
    names = read_splits(splits_path)[split]
    if not names:
        raise CaptionerError(
            f"{splits_path}: split '{split}' has no images to evaluate (set evaluate.split: val in {where('evaluate.split')})"
        )
    return list(names)


def write_predictions_csv(path: str | os.PathLike[str], rows: Sequence[tuple[str, str, Sequence[str]]]) -> None:
    """metrics/predictions.csv: image, prediction, references joined by ' | '."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "prediction", "references"])
    for name, prediction, refs in rows:
        writer.writerow([name, prediction, " | ".join(refs)])
    write_text(path, buf.getvalue())


def sample_figure(
    path: str | os.PathLike[str],
    images_dir: Path,
    rows: Sequence[tuple[str, str, Sequence[str]]],
    count: int,
    results: dict[str, Caption] | None = None,
) -> None:
    """A grid of `count` evenly spaced images with predicted (P) and first reference (R) caption under each.

    With attention `results` ({image: Caption}), the first few of them also get a row of per-word heatmaps.
    """
    from matplotlib.figure import Figure

    from captioner.serving.explain import draw_explanation, save_figure

    count = min(count, len(rows))
    if count <= 0:
        return
    picks = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, count).round()]
    explained = [(name, results[name]) for name, _, _ in picks
                 if results and name in results and results[name].attention is not None][:ATTENTION_SAMPLES]
    explained = [(name, result, photo) for name, result in explained if (photo := _photo(images_dir / name)) is not None]
    cols = min(4, count)
    nrows = (count + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 5 * nrows + 2.6 * len(explained)), layout="constrained")
    grid_fig, *strips = fig.subfigures(1 + len(explained), 1, squeeze=False,
                                       height_ratios=[5 * nrows] + [2.6] * len(explained)).flat
    axes = grid_fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, prediction, refs) in zip(axes.flat, picks):
        photo = _photo(images_dir / name)
        if photo is None:
            ax.text(0.5, 0.5, "(image not found)", ha="center", va="center")
        else:
            ax.imshow(photo)
        text = f"P: {prediction}\nR: {refs[0] if refs else ''}"
        ax.set_title("\n".join(textwrap.fill(line, 42) for line in text.splitlines()), fontsize=8, loc="left")
    for strip, (name, result, photo) in zip(strips, explained):
        draw_explanation(strip, photo, result, name, max_words=ATTENTION_WORDS, columns=ATTENTION_WORDS + 1)
    save_figure(fig, path)


def _photo(path: Path):
    """The photo upright for a figure, or None if it cannot be read."""
    from captioner.serving.explain import load_photo

    try:
        return load_photo(path)
    except OSError:
        return None


def run_evaluate(
    params: dict[str, Any],
    model_dir: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    processed_dir: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str],
    metrics_dir: str | os.PathLike[str],
    progress: bool = True,
) -> dict[str, Any]:
    """The evaluate stage; returns the metrics written to metrics/eval.json."""
    from captioner.serving.api import Captioner
    from captioner.model.bundle import load_bundle
    from captioner.model.metrics import caption_scores

    cfg = params["evaluate"]
    split, beam_size = cfg["split"], int(cfg["beam_size"])
    raw_dir, metrics_dir = Path(raw_dir), Path(metrics_dir)
    names = split_images(raw_dir / "splits.json", split)
    references = read_captions(Path(processed_dir) / "captions.json")
    bundle = load_bundle(model_dir)
    features = FeatureReader(Path(features_dir) / FEATURES_FILE)
    if tuple(features.feature_shape) != bundle.feature_shape:
        raise CaptionerError(
            f"{Path(features_dir) / FEATURES_FILE}: features of shape {tuple(features.feature_shape)} but the model "
            f"bundle was trained on {bundle.feature_shape} (re-run `dvc repro train`)"
        )
    row_of = {n: i for i, n in enumerate(features.names)}
    kept = [n for n in names if n in row_of and references.get(n)]
    if len(kept) < len(names):
        print(f"warning: {len(names) - len(kept)} {split} images lack features or captions; left out", file=sys.stderr)
    if not kept:
        raise CaptionerError(f"split '{split}': none of its images has both features and captions")
    mirrored = FeatureReader(Path(features_dir) / FEATURES_FILE, FLIPPED) if bundle.flip else None
    start = time.monotonic()
    captioner, rows, results = Captioner(bundle), [row_of[n] for n in kept], []
    for first in range(0, len(rows), _READ_CHUNK):  # feature rows read per chunk, never the whole split at once
        chunk = rows[first : first + _READ_CHUNK]
        views = features[chunk] if mirrored is None else np.stack([features[chunk], mirrored[chunk]], axis=1)
        results += captioner.caption_features(views, beam_size, progress)
    seconds = time.monotonic() - start
    by_name = {n: r.caption for n, r in zip(kept, results)}
    scores = caption_scores({n: references[n] for n in kept}, by_name)
    result = {
        **{k: round(v, 5) for k, v in scores.items()},
        "beam_size": beam_size,
        "split": split,
        "n_images": len(kept),
        "decoder": bundle.decoder_kind,
        **({"members": bundle.member_count} if bundle.members else {}),  # an ensemble: how many decoders it averages
    }
    print(f"captioned {len(kept)} {split} images in {seconds:.1f} s (beam {beam_size})", file=sys.stderr)
    rows = [(n, by_name[n], references[n]) for n in kept]
    write_json(metrics_dir / "eval.json", result)
    write_predictions_csv(metrics_dir / "predictions.csv", rows)
    sample_figure(metrics_dir / "samples.png", raw_dir / "Images", rows, int(cfg["figure_images"]),
                  dict(zip(kept, results)))
    return result
