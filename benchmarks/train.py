"""Training throughput (captions/s) and peak RSS of the default attention decoder on a Flickr8k-sized problem.

Rows, each measured in a fresh subprocess (peak RSS is per process), all in the same run:
- reference: the attention decoder of a previous commit (default e5cb678: additive attention, one image
  row per caption, batches of 64 length-bucketed captions), run from a `git archive` of that commit;
- today's decoder with each lever added in turn: multi-head dot-product attention, the image side once
  per image (k captions per image in a batch), bfloat16 mixed precision (the default stops here), then
  options: the default with a 256-wide layer before the logits (`train.output_units`), and a batch of 320
  captions without and with that layer. (XLA is not a row: on this CPU it made a step about 8x slower,
  even with one fixed batch shape.)
Data: synthetic float16 grid features (7x7x1280) and captions with Flickr8k's length profile (6000
images, 5 captions each, vocabulary 2532), or the pipeline's real outputs with --data ROOT.

    python benchmarks/train.py [--repeats 3] [--batches 30] [--data .] [--reference e5cb678]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_IMAGES, PER_IMAGE, VOCAB, GRID, MAX_LENGTH = 6000, 5, 2532, (7, 7, 1280), 24
ROOT = Path(__file__).resolve().parents[1]

# label -> (captions per image in a batch, captions per batch, precision, output units); None = the reference commit
VARIANTS: dict[str, tuple[int, int, str, int] | None] = {
    "reference (previous commit)": None,
    "dot-product attention, 64": (1, 64, "float32", 512),
    "+ image once per 5 captions, 160": (5, 160, "float32", 512),
    "+ bfloat16 (default)": (5, 160, "bfloat16", 512),
    "default + output layer 256": (5, 160, "bfloat16", 256),
    "+ 320 per batch": (5, 320, "bfloat16", 512),
    "+ output layer 256": (5, 320, "bfloat16", 256),
}


def synthetic_captions(n_images: int, rng: np.random.Generator):
    """(vocabulary, CaptionSet) of PER_IMAGE random captions per image with Flickr8k's length profile.

    Caption lengths follow Flickr8k's (mean ~12 tokens with <start> and <end>); words are uniform over the
    vocabulary of VOCAB tokens. Image i owns captions 5i..5i+4, so the caption set indexes feature rows 0..n-1.
    """
    from captioner.data.text import END_ID, PAD_ID, START_ID, Vocabulary
    from captioner.model.training import CaptionSet

    n_captions = n_images * PER_IMAGE
    words = np.clip(rng.normal(10.8, 3.8, n_captions).round(), 1, MAX_LENGTH - 2).astype(int)
    tokens = rng.integers(4, VOCAB, (n_captions, MAX_LENGTH), dtype=np.int32)
    tokens[:, 0] = START_ID
    tokens[np.arange(n_captions), words + 1] = END_ID
    tokens[np.arange(MAX_LENGTH) >= (words + 2)[:, None]] = PAD_ID
    vocab = Vocabulary(tokens=("<pad>", "<unk>", "<start>", "<end>", *(f"w{i}" for i in range(VOCAB - 4))),
                       max_length=MAX_LENGTH)
    return vocab, CaptionSet(np.repeat(np.arange(n_images), PER_IMAGE), tokens)


def synthetic(seed: int = 0):
    """Random float16 grid features for N_IMAGES images, each with PER_IMAGE synthetic captions."""
    from captioner.model.training import CaptionSet, TrainData

    rng = np.random.default_rng(seed)
    features = rng.random((N_IMAGES, *GRID), dtype=np.float32).astype(np.float16)
    vocab, train = synthetic_captions(N_IMAGES, rng)
    empty = CaptionSet(np.zeros(0, dtype=np.int64), np.zeros((0, MAX_LENGTH), dtype=np.int32))
    names = [f"image{i}" for i in range(N_IMAGES)]
    return TrainData(features, names, GRID, {}, vocab, train, empty)


def load(data_root: str | None):
    """The benchmark's training data: synthetic, or a pipeline's real outputs under `data_root`."""
    if data_root is None:
        return synthetic()
    from captioner.model.training import load_train_data

    root = Path(data_root)
    return load_train_data(root / "data/features", root / "data/processed", "attention")


def measure(data, variant: tuple[int, int, str, int] | None, batches: int) -> dict:
    """Time `batches` training steps of the attention decoder with the library on sys.path (after warm-up)."""
    seen, seconds = timed_steps(*build(data, variant), 8, batches)
    return {"captions": seen, "seconds": seconds}


def build(data, variant: tuple[int, int, str, int] | None):
    """(compiled attention decoder, training dataset) of a row, as the train stage builds them."""
    import keras

    from captioner.model import decoders as m
    from captioner.core.params import DEFAULTS
    from captioner.model.training import make_dataset

    p = DEFAULTS["train"]
    keras.utils.set_random_seed(0)
    shape = data.feature_shape
    if variant is None:  # the reference commit's API: per-caption batches of 64, additive attention
        spec = m.DecoderSpec("attention", len(data.vocab), shape, p["embedding_dim"], p["units"], p["dropout"])
        model = m.build_decoder(spec)
        model.compile(keras.optimizers.Adam(1e-3), loss=m.masked_loss)
        ds = make_dataset(data.features, data.train, 64, seed=0)
    else:
        from captioner.core.precision import keras_policy

        per_image, batch_size, precision, output_units = variant
        spec = m.DecoderSpec("attention", len(data.vocab), shape, p["embedding_dim"], p["units"], p["dropout"],
                             p["attention_heads"], output_units)
        model = m.build_decoder(spec, keras_policy(precision))
        model.compile(keras.optimizers.Adam(1e-3), loss=m.caption_loss(), jit_compile=False)
        ds = make_dataset(data.features, data.train, batch_size, seed=0, captions_per_image=per_image)
    return model, ds


def timed_steps(model, dataset, warmup: int, batches: int) -> tuple[int, float]:
    """Train on `warmup` batches (traces for several caption widths), then time `batches`: (captions, seconds)."""
    it = iter(dataset.repeat())
    for _ in range(warmup):
        (x, t), y = next(it)
        model.train_on_batch([x, t], y)
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        (x, t), y = next(it)
        model.train_on_batch([x, t], y)
        seen += len(t)
    return seen, time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print it as JSON (with peak RSS)."""
    variant = VARIANTS[args.worker]
    result = measure(load(args.data), variant, args.batches)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["captions_per_s"] = result["captions"] / result["seconds"]
    print(json.dumps(result))


def reference_tree(commit: str, dest: Path) -> Path:
    """Unpack the reference commit's `captioner` package into `dest` (git archive; the working tree is untouched)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "captioner"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--data", default=None, help="project root with data/features and data/processed")
    parser.add_argument("--reference", default="e5cb678", help="commit whose attention decoder is the baseline")
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    labels = args.only or list(VARIANTS)
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_tree(args.reference, Path(tmp))
        for _ in range(args.repeats):
            for label in labels:
                path = str(reference) if VARIANTS[label] is None else str(ROOT)
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
                cmd = [sys.executable, __file__, "--worker", label, "--batches", str(args.batches)]
                cmd += ["--data", args.data] if args.data else []
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
                if out.returncode:
                    sys.exit(f"error: row {label!r} failed: {out.stderr.strip().splitlines()[-1]}")
                runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {label: {k: statistics.median(r[k] for r in rs) for k in ("captions_per_s", "peak_rss_mb")}
           for label, rs in runs.items()}
    base = med[labels[0]]["captions_per_s"]
    print(f"data: {args.data or 'synthetic Flickr8k-sized grid (6000 images x 5 captions, 7x7x1280 float16)'}; "
          f"attention decoder; {args.repeats} runs x {args.batches} batches, medians; ratio vs '{labels[0]}'")
    print(f"{'variant':<34}{'captions/s':>12}{'peak RSS MB':>14}{'ratio':>9}")
    for label in labels:
        ratio = med[label]["captions_per_s"] / base
        print(f"{label:<34}{med[label]['captions_per_s']:>12.0f}{med[label]['peak_rss_mb']:>14.0f}{ratio:>8.2f}x")


if __name__ == "__main__":
    main()
