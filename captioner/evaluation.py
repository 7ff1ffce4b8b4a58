"""The evaluate stage: caption every image of a split, score BLEU-1..4 / CIDEr-D, write predictions and a figure."""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner.atomic import atomic_path, write_json, write_text
from captioner.corpus import read_captions, read_splits
from captioner.datasets.raw import SPLITS
from captioner.errors import CaptionerError
from captioner.feature_store import FEATURES_FILE, load_features


def split_images(splits_path: str | os.PathLike[str], split: str) -> list[str]:
    """Image names of `split` from splits.json; an unknown or empty split is a one-line error."""
    splits_path = Path(splits_path)
    if split not in SPLITS:
        raise CaptionerError(f"params.yaml: evaluate.split must be one of {', '.join(SPLITS)}, got {split!r}")
    names = read_splits(splits_path)[split]
    if not names:
        raise CaptionerError(
            f"{splits_path}: split '{split}' has no images to evaluate (set evaluate.split: val in params.yaml)"
        )
    return list(names)


def caption_features(bundle, features: np.ndarray, beam_size: int, progress: bool = True) -> list[str]:
    """Captions for rows of extracted features (grids pooled as the decoder needs), batched beam or greedy search."""
    from tqdm import tqdm

    from captioner.decode import CaptionDecoder
    from captioner.model import prepare_features

    feats = prepare_features(features, bundle.decoder_kind, "features")
    decoder = CaptionDecoder(bundle.model, bundle.vocab.max_length)
    with tqdm(total=len(feats), desc="captioning", unit="img", disable=not progress, file=sys.stderr) as bar:
        if beam_size <= 1:
            ids = decoder.greedy(feats)
            bar.update(len(feats))
        else:
            ids = decoder.beam(feats, beam_size, bundle.config["decoding"].get("length_alpha", 1.0), progress=bar.update)
    return [bundle.vocab.decode(row) for row in ids]


def write_predictions_csv(path: str | os.PathLike[str], rows: Sequence[tuple[str, str, Sequence[str]]]) -> None:
    """metrics/predictions.csv: image, prediction, references joined by ' | '."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "prediction", "references"])
    for name, prediction, refs in rows:
        writer.writerow([name, prediction, " | ".join(refs)])
    write_text(path, buf.getvalue())


def sample_figure(
    path: str | os.PathLike[str], images_dir: Path, rows: Sequence[tuple[str, str, Sequence[str]]], count: int
) -> None:
    """A grid of `count` evenly spaced images with predicted (P) and first reference (R) caption under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    from PIL import Image

    count = min(count, len(rows))
    if count <= 0:
        return
    picks = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, count).round()]
    cols = min(4, count)
    nrows = (count + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 5 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, prediction, refs) in zip(axes.flat, picks):
        try:
            with Image.open(images_dir / name) as img:
                ax.imshow(img.convert("RGB"))
        except OSError:
            ax.text(0.5, 0.5, "(image not found)", ha="center", va="center")
        text = f"P: {prediction}\nR: {refs[0] if refs else ''}"
        ax.set_title("\n".join(textwrap.fill(line, 42) for line in text.splitlines()), fontsize=8, loc="left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


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
    from captioner.bundle import load_bundle
    from captioner.metrics import caption_scores

    cfg = params["evaluate"]
    split, beam_size = cfg["split"], int(cfg["beam_size"])
    raw_dir, metrics_dir = Path(raw_dir), Path(metrics_dir)
    names = split_images(raw_dir / "splits.json", split)
    references = read_captions(Path(processed_dir) / "captions.json")
    bundle = load_bundle(model_dir)
    feature_names, features, _ = load_features(Path(features_dir) / FEATURES_FILE)
    if tuple(features.shape[1:]) != bundle.feature_shape:
        raise CaptionerError(
            f"{Path(features_dir) / FEATURES_FILE}: features of shape {tuple(features.shape[1:])} but the model "
            f"bundle was trained on {bundle.feature_shape} (re-run `dvc repro train`)"
        )
    row_of = {n: i for i, n in enumerate(feature_names)}
    kept = [n for n in names if n in row_of and references.get(n)]
    if len(kept) < len(names):
        print(f"warning: {len(names) - len(kept)} {split} images lack features or captions; left out", file=sys.stderr)
    if not kept:
        raise CaptionerError(f"split '{split}': none of its images has both features and captions")
    start = time.monotonic()
    predictions = caption_features(bundle, features[[row_of[n] for n in kept]], beam_size, progress)
    seconds = time.monotonic() - start
    by_name = dict(zip(kept, predictions))
    scores = caption_scores({n: references[n] for n in kept}, by_name)
    result = {
        **{k: round(v, 5) for k, v in scores.items()},
        "beam_size": beam_size,
        "split": split,
        "n_images": len(kept),
        "decoder": bundle.decoder_kind,
    }
    print(f"captioned {len(kept)} {split} images in {seconds:.1f} s (beam {beam_size})", file=sys.stderr)
    rows = [(n, by_name[n], references[n]) for n in kept]
    write_json(metrics_dir / "eval.json", result)
    write_predictions_csv(metrics_dir / "predictions.csv", rows)
    sample_figure(metrics_dir / "samples.png", raw_dir / "Images", rows, int(cfg["figure_images"]))
    return result
