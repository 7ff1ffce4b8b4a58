"""Training throughput (captions/s) and peak RSS on a Flickr8k-sized problem: ours vs the classic recipe.

Ours: whole captions with teacher forcing, length-bucketed batches, features held once and gathered
per batch (captioner.training). Classic: the tutorial's generator that expands every caption into one
(image feature, padded prefix, one-hot next word) sample per word and trains the merge model on
them. Both run on the same data in the same run, each in a fresh subprocess (peak RSS is per
process). Data: synthetic random features/captions of Flickr8k size (6000 images, 30000 captions,
vocabulary 2900, Flickr8k-like lengths), or the pipeline's real outputs with --data ROOT.

    python benchmarks/train.py [--repeats 3] [--batches 60] [--data .]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_IMAGES, N_CAPTIONS, VOCAB, FEATURE_DIM, MAX_LENGTH = 6000, 30000, 2900, 1280, 35


def synthetic(seed: int = 0):
    """Random pooled features and captions with Flickr8k's length profile (mean ~12 tokens with start/end)."""
    from captioner.text import END_ID, START_ID, Vocabulary
    from captioner.training import CaptionSet, TrainData

    rng = np.random.default_rng(seed)
    features = rng.random((N_IMAGES, FEATURE_DIM), dtype=np.float32)
    words = np.clip(rng.normal(10.8, 3.8, N_CAPTIONS).round(), 1, MAX_LENGTH - 2).astype(int)
    tokens = np.zeros((N_CAPTIONS, MAX_LENGTH), dtype=np.int32)
    for i, n in enumerate(words):
        tokens[i, : n + 2] = [START_ID, *rng.integers(4, VOCAB, n), END_ID]
    rows = np.repeat(np.arange(N_IMAGES), N_CAPTIONS // N_IMAGES)
    vocab = Vocabulary(tokens=("<pad>", "<unk>", "<start>", "<end>", *(f"w{i}" for i in range(VOCAB - 4))),
                       max_length=MAX_LENGTH)
    empty = CaptionSet(np.zeros(0, dtype=np.int64), np.zeros((0, MAX_LENGTH), dtype=np.int32))
    names = [f"image{i}" for i in range(N_IMAGES)]
    return TrainData(features, names, (FEATURE_DIM,), {}, vocab, CaptionSet(rows, tokens), empty)


def load(data_root: str | None):
    if data_root is None:
        return synthetic()
    from captioner.training import load_train_data

    root = Path(data_root)
    return load_train_data(root / "data/features", root / "data/processed", "merge")


def run_ours(data, params: dict, batches: int) -> dict:
    """Time `batches` training steps of the merge decoder on whole captions (after one warm-up epoch slice)."""
    import keras

    from captioner.model import DecoderSpec, build_decoder, masked_loss
    from captioner.training import make_dataset

    keras.utils.set_random_seed(0)
    model = build_decoder(DecoderSpec("merge", len(data.vocab), data.feature_shape, params["embedding_dim"],
                                      params["units"], params["dropout"]))
    model.compile(keras.optimizers.Adam(1e-3), loss=masked_loss)
    ds = make_dataset(data.features, data.train, params["batch_size"], seed=0)
    it = iter(ds)
    for _ in range(5):  # warm-up: traces for a few batch widths
        (x, t), y = next(it)
        model.train_on_batch([x, t], y)
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        (x, t), y = next(it)
        model.train_on_batch([x, t], y)
        seen += len(y)
    return {"captions": seen, "seconds": time.perf_counter() - start}


def run_classic(data, params: dict, batches: int) -> dict:
    """The tutorial recipe: one (feature, prefix padded to max_length, one-hot next word) sample per word."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    vocab, max_len, units = len(data.vocab), data.vocab.max_length, params["units"]
    image = keras.Input(data.feature_shape)
    fe = layers.Dense(units, activation="relu")(layers.Dropout(params["dropout"])(image))
    prefix = keras.Input((max_len,))
    se = layers.LSTM(units)(layers.Dropout(params["dropout"])(layers.Embedding(vocab, params["embedding_dim"],
                                                                               mask_zero=True)(prefix)))
    out = layers.Dense(vocab, activation="softmax")(layers.Dense(units, activation="relu")(layers.add([fe, se])))
    model = keras.Model([image, prefix], out)
    model.compile(keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")

    def generator():
        rng = np.random.default_rng(0)
        order = rng.permutation(len(data.train))
        for start in range(0, len(order), params["batch_size"]):  # the same captions per step as ours
            x1, x2, y = [], [], []
            for i in order[start : start + params["batch_size"]]:
                seq = data.train.tokens[i][data.train.tokens[i] > 0]
                for k in range(1, len(seq)):
                    x1.append(data.features[data.train.image_rows[i]])
                    padded = np.zeros(max_len, dtype=np.int32)
                    padded[max_len - k :] = seq[:k]  # pre-padding, as pad_sequences does
                    x2.append(padded)
                    y.append(keras.utils.to_categorical(seq[k], vocab))
            yield np.array(x1), np.array(x2), np.array(y), min(params["batch_size"], len(order) - start)

    it = generator()
    for _ in range(2):
        x1, x2, y, _n = next(it)
        model.train_on_batch([x1, x2], y)
    seen, pairs, start = 0, 0, time.perf_counter()
    for _ in range(batches):
        x1, x2, y, n = next(it)
        model.train_on_batch([x1, x2], y)
        seen += n
        pairs += len(y)
    return {"captions": seen, "pairs": pairs, "seconds": time.perf_counter() - start}


def worker(mode: str, data_root: str | None, batches: int, params: dict) -> None:
    """Run one measurement in this process and print it as JSON (with peak RSS)."""
    data = load(data_root)
    result = (run_ours if mode == "ours" else run_classic)(data, params, batches)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["captions_per_s"] = result["captions"] / result["seconds"]
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per run (ours)")
    parser.add_argument("--classic-batches", type=int, default=15, help="timed batches per run (classic)")
    parser.add_argument("--data", default=None, help="project root with data/features and data/processed")
    parser.add_argument("--worker", choices=["ours", "classic"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    from captioner.params import DEFAULTS

    params = dict(DEFAULTS["train"])
    if args.worker:
        worker(args.worker, args.data, args.batches if args.worker == "ours" else args.classic_batches, params)
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs: dict[str, list[dict]] = {"ours": [], "classic": []}
    for _ in range(args.repeats):
        for mode in runs:
            cmd = [sys.executable, __file__, "--worker", mode, "--batches", str(args.batches),
                   "--classic-batches", str(args.classic_batches)] + (["--data", args.data] if args.data else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("captions_per_s", "peak_rss_mb")} for m, rs in runs.items()}
    pairs_per_caption = statistics.median(r["pairs"] / r["captions"] for r in runs["classic"])
    print(f"data: {'synthetic Flickr8k-sized' if not args.data else args.data}; decoder merge, units {params['units']}, "
          f"embedding {params['embedding_dim']}, batch {params['batch_size']} captions; {args.repeats} runs, medians")
    print(f"{'recipe':<44}{'captions/s':>12}{'peak RSS MB':>14}{'speed ratio':>13}")
    for mode, label in (("ours", "whole captions, bucketed, masked loss"),
                        ("classic", f"(prefix, next word) pairs ({pairs_per_caption:.1f}/caption)")):
        ratio = med[mode]["captions_per_s"] / med["classic"]["captions_per_s"]
        print(f"{label:<44}{med[mode]['captions_per_s']:>12.0f}{med[mode]['peak_rss_mb']:>14.0f}{ratio:>12.1f}x")
    n_pairs = pairs_per_caption * N_CAPTIONS
    full = n_pairs * (FEATURE_DIM * 4 + MAX_LENGTH * 4 + VOCAB * 4) / 2**30
    print(f"classic recipe with all pairs materialised (no generator): ~{n_pairs:,.0f} pairs, ~{full:.1f} GiB")


if __name__ == "__main__":
    main()
