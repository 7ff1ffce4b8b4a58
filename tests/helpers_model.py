"""Tiny synthetic pipeline outputs (features, vocab, sequences, captions, splits) for the model tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioner.vision.feature_store import save_features
from captioner.data.text import Vocabulary

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def class_captions(colour: str, shape: str) -> list[str]:
    """Five captions naming the class's colour and shape, with varied wording."""
    return [
        f"a {colour} {shape}",
        f"a {colour} {shape} on a white background",
        f"the {shape} is {colour}",
        f"one {colour} {shape} in the middle",
        f"a small {colour} {shape}",
    ]


def make_dataset(
    root: Path,
    n_images: int = 72,
    dim: int = 24,
    grid: bool = False,
    split_sizes: tuple[int, int, int] = (48, 12, 12),
    seed: int = 0,
    noise: float = 0.3,
) -> dict:
    """Write data/{raw,processed,features} under `root` for a colour x shape problem; return a summary."""
    rng = np.random.default_rng(seed)
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    protos = rng.normal(size=(len(classes), dim)).astype(np.float32)
    names = [f"img{i:04d}.jpg" for i in range(n_images)]
    labels = np.arange(n_images) % len(classes)
    vectors = protos[labels] + noise * rng.normal(size=(n_images, dim)).astype(np.float32)
    if grid:
        cells = vectors[:, None, None, :] + noise * rng.normal(size=(n_images, 2, 2, dim))
        features = cells.astype(np.float16)
    else:
        features = vectors
    captions = {n: class_captions(*classes[k]) for n, k in zip(names, labels)}
    a, b, _ = split_sizes
    splits = {"train": names[:a], "val": names[a : a + b], "test": names[a + b : sum(split_sizes)]}

    raw, processed, feat_dir = root / "data/raw", root / "data/processed", root / "data/features"
    for d in (raw / "Images", processed, feat_dir):
        d.mkdir(parents=True, exist_ok=True)
    (raw / "splits.json").write_text(json.dumps(splits))
    (processed / "captions.json").write_text(json.dumps(captions))
    vocab = Vocabulary.build([c for n in splits["train"] for c in captions[n]], min_count=1, max_length_percentile=100)
    (processed / "vocab.json").write_text(json.dumps(vocab.to_json()))
    arrays = {"names": np.array(names)}
    index = {n: i for i, n in enumerate(names)}
    for split, members in splits.items():
        image_ids = [index[n] for n in members for _ in captions[n]]
        arrays[f"{split}_image"] = np.array(image_ids, dtype=np.int32)
        arrays[f"{split}_tokens"] = vocab.encode([c for n in members for c in captions[n]]).reshape(-1, vocab.max_length)
    np.savez(processed / "sequences.npz", **arrays)
    output = "grid" if grid else "pooled"
    save_features(feat_dir / "features.h5", names, features, {"encoder": "synthetic", "output": output})
    meta = {"encoder": "synthetic", "weights": "none", "input_size": 32, "output": output,
            "feature_shape": list(features.shape[1:])}
    (feat_dir / "meta.json").write_text(json.dumps(meta))
    return {"names": names, "captions": captions, "splits": splits, "vocab": vocab}


def small_params(decoder: str = "merge", scst: dict | None = None, **train) -> dict:
    """Params for fast tests: tiny decoder, a few epochs, no time pressure, self-critical training off."""
    return {
        "seed": 1,
        "train": {
            "decoder": decoder, "embedding_dim": 16, "units": 32, "output_units": 32, "dropout": 0.1, "attention_heads": 2,
            "batch_size": 16, "captions_per_image": 1, "precision": "float32", "devices": 1, "epochs": 12, "learning_rate": 0.01,
            "patience": 3, "max_minutes": 5, **train,
        },
        "scst": {"epochs": 0, "learning_rate": 0.001, "samples": 4, "batch_images": 16, "precision": "float32",
                 "litert": False, "max_minutes": 5, **(scst or {})},
        "evaluate": {"split": "test", "beam_size": 3, "figure_images": 4},
    }
