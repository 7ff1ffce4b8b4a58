"""Feature reads per batch vs in memory: peak RSS, rows/s and training captions/s for 7k, 30k and 120k images.

Writes synthetic grid feature files (7x7x1280 float16, the default encoder's grid, row-chunked like the
stage writes them) into a temporary folder, one size at a time, and deletes each after measuring.
Every measurement runs in a fresh process, so its peak RSS (VmHWM, imports included) is its own.

Table 1, raw reads: random batches of 64 rows,

- `reader, cold`: `FeatureReader.rows` after the file's pages were dropped from the page cache
  (`posix_fadvise DONTNEED` on that file only), so rows come from the disk;
- `reader, warm`: the same with the file in the page cache (what later epochs see when RAM allows);
- `in memory`: `load_features` first (the whole array), then numpy indexing; only up to
  `--in-memory-max` images, because 120k images need 15 GB of RAM.

Table 2, training: the default attention decoder built and compiled as the train stage builds it (the
`train` defaults of `captioner.core.params`: `decoder_spec`, precision `auto` resolved, Adam, `caption_loss`, op
determinism) and fed by `make_dataset` with the default batch of 160 captions = 32 images x 5 captions,
so each batch reads 32 whole image rows. Captions are synthetic like Flickr8k's (5 per image, vocabulary
2532, Flickr8k's caption lengths: `benchmarks/train.py`), for every image of the file, so the caption
arrays grow with the file (their size is a column). Features come from a `FeatureReader` on the file
(read per batch, file in the page cache, as later epochs see it) or from the whole array loaded first
(`in memory`, up to `--in-memory-max` images). After `--train-warmup` batches (tracing), `--train-batches`
batches are timed. `reader / in memory` divides the reader's captions/s by the in-memory captions/s of the
same round, at the same size or else at the largest in-memory size measured before it.

Both tables show medians over rounds. The first table's header gives the load average at the start, the
second's at the end: on a shared machine the absolute speeds drop, so compare the same-round ratios. The
default run takes about 8 minutes on the 2-core development machine (niced, beside a training run) and
needs about 16 GB of free disk; `--train-rounds 0` skips the training table.

    python benchmarks/feature_memory.py [--sizes 7000 30000 120000] [--rounds 3] [--batches 300]
                                        [--train-rounds 2] [--train-warmup 8] [--train-batches 20]
                                        [--in-memory-max 30000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.vision.feature_store import FeatureReader, load_features, write_features  # noqa: E402
from captioner.core.params import DEFAULTS  # noqa: E402

SHAPE = (7, 7, 1280)
BATCH = 64
BLOCK = 1024


def file_bytes(n: int) -> int:
    """Bytes of the feature rows of `n` images."""
    return n * int(np.prod(SHAPE)) * 2


def write_synthetic(path: Path, n: int) -> float:
    """Write `n` images of synthetic grid features (distinct rows, float16); return the seconds it took."""
    base = np.random.default_rng(0).standard_normal((BLOCK, *SHAPE), dtype=np.float32).astype(np.float16)

    def blocks():
        for start in range(0, n, BLOCK):
            yield base[: min(BLOCK, n - start)] + np.float16(start % 7)

    began = time.perf_counter()
    write_features(path, [f"image_{i:06d}.jpg" for i in range(n)], SHAPE, np.float16, blocks(),
                   {"encoder": "synthetic", "output": "grid"})
    return time.perf_counter() - began


def drop_from_page_cache(path: Path) -> None:
    """Evict this one file's pages from the page cache (other files and processes are untouched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, path: Path, batches: int) -> dict:
    """In a fresh process: read `batches` random batches of BATCH rows; peak RSS in MB and rows/s."""
    rng = np.random.default_rng(1)
    began = time.perf_counter()
    if mode == "memory":
        names, features, _ = load_features(path)
        read = features.__getitem__
    else:
        reader = FeatureReader(path)
        names, read = reader.names, reader.rows
    opened = time.perf_counter() - began
    index = [rng.integers(0, len(names), BATCH) for _ in range(batches)]
    began = time.perf_counter()
    total = 0.0
    for rows in index:
        total += float(read(rows)[:, 0, 0, 0].astype(np.float32).sum())
    seconds = time.perf_counter() - began
    return {"rows_per_s": batches * BATCH / seconds, "peak_rss_mb": peak_rss_mb(), "open_s": opened, "check": total}


def train_child(mode: str, path: Path, warmup: int, batches: int) -> dict:
    """In a fresh process: train the default decoder on the file's images; peak RSS in MB and captions/s.

    `mode` is `memory` (the whole array loaded first) or `reader` (a FeatureReader, rows per batch).
    """
    import keras
    import tensorflow as tf

    from benchmarks.train import synthetic_captions, timed_steps
    from captioner.model.decoders import build_decoder, caption_loss
    from captioner.core.precision import keras_policy, resolve_precision
    from captioner.model.training import decoder_spec, make_dataset

    p, seed = DEFAULTS["train"], DEFAULTS["members"][0]
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    began = time.perf_counter()
    features = load_features(path)[1] if mode == "memory" else FeatureReader(path)
    opened = time.perf_counter() - began
    vocab, captions = synthetic_captions(len(features), np.random.default_rng(0))
    model = build_decoder(decoder_spec(p, len(vocab), SHAPE), keras_policy(resolve_precision(p["precision"])))
    model.compile(keras.optimizers.Adam(p["learning_rate"]), loss=caption_loss(), jit_compile=False)
    dataset = make_dataset(features, captions, p["batch_size"], seed, captions_per_image=p["captions_per_image"])
    seen, seconds = timed_steps(model, dataset, warmup, batches)
    return {"captions_per_s": seen / seconds, "peak_rss_mb": peak_rss_mb(), "open_s": opened,
            "caption_mb": (captions.tokens.nbytes + captions.image_rows.nbytes) / 1e6,
            "precision": resolve_precision(p["precision"])}


def measure(mode: str, path: Path, *options: str) -> dict:
    """Run `child` (or `train_child` for `train-*` modes) in a fresh interpreter and return its result."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), *options],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"error: {mode} on {path} failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(path: Path) -> None:
    """Read the whole file once so its pages are in the page cache (as after a first epoch, RAM allowing)."""
    buffer = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def load_average() -> str:
    """The 1-minute load average with the core count, e.g. `load 2.1 on 2 cores`."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def median(results: list[dict], key: str) -> float:
    """The median of one key over rounds."""
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 30000, 120000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the raw-read table")
    parser.add_argument("--batches", type=int, default=300, help="batches of 64 rows per raw-read measurement")
    parser.add_argument("--train-rounds", type=int, default=2, help="rounds of the training table (0: skip it)")
    parser.add_argument("--train-warmup", type=int, default=8, help="untimed training batches first")
    parser.add_argument("--train-batches", type=int, default=20, help="timed training batches")
    parser.add_argument("--in-memory-max", type=int, default=30000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path = args.child[0], Path(args.child[1])
        if mode.startswith("train-"):
            result = train_child(mode.removeprefix("train-"), path, args.train_warmup, args.train_batches)
        else:
            result = child(mode, path, args.batches)
        print(json.dumps(result))
        return
    train_options = ("--train-warmup", str(args.train_warmup), "--train-batches", str(args.train_batches))
    train_rows: list[str] = []
    base: tuple[int, float] | None = None  # the first trained size and its reader's peak RSS
    memory_ref: tuple[int, list[dict]] | None = None  # largest in-memory size trained so far, its rounds
    precision = ""
    print(f"# 1. feature reads: random batches of {BATCH} rows of {SHAPE} float16, {args.batches} batches, "
          f"median of {args.rounds} rounds; {load_average()} at start")
    print("| images | file GB | write s | mode | peak RSS MB | rows/s | vs in memory | open/load s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        free = shutil.disk_usage(args.dir).free
        if file_bytes(n) * 1.05 > free:
            print(f"| {n} | {file_bytes(n) / 1e9:.1f} | – | skipped: {free / 1e9:.0f} GB free in {args.dir} |"
                  " | | | |")
            continue
        with tempfile.TemporaryDirectory(prefix="feature-memory-", dir=args.dir) as tmp:
            path = Path(tmp) / "features.h5"
            wrote = write_synthetic(path, n)
            runs: dict[str, list[dict]] = {"reader, cold": [], "reader, warm": [], "in memory": []}
            for _ in range(args.rounds):
                drop_from_page_cache(path)
                runs["reader, cold"].append(measure("reader", path, "--batches", str(args.batches)))
                runs["reader, warm"].append(measure("reader", path, "--batches", str(args.batches)))
                if n <= args.in_memory_max:
                    runs["in memory"].append(measure("memory", path, "--batches", str(args.batches)))
            for mode, results in runs.items():
                if not results:
                    print(f"| {n} | {path.stat().st_size / 1e9:.2f} | {wrote:.0f} | {mode} | skipped (needs "
                          f"{file_bytes(n) / 1e9:.1f} GB RAM; --in-memory-max) | | | |")
                    continue
                ratios = [r["rows_per_s"] / m["rows_per_s"] for r, m in zip(results, runs["in memory"])]
                ratio = f"{statistics.median(ratios):.2f}x" if ratios and mode != "in memory" else "–"
                print(f"| {n} | {path.stat().st_size / 1e9:.2f} | {wrote:.0f} | {mode} | "
                      f"{median(results, 'peak_rss_mb'):.0f} | {median(results, 'rows_per_s'):.0f} | {ratio} | "
                      f"{median(results, 'open_s'):.2f} |", flush=True)
            if not args.train_rounds:
                continue
            warm_page_cache(path)
            train: dict[str, list[dict]] = {"reader": [], "in memory": []}
            for _ in range(args.train_rounds):
                train["reader"].append(measure("train-reader", path, *train_options))
                if n <= args.in_memory_max:
                    train["in memory"].append(measure("train-memory", path, *train_options))
            if train["in memory"]:
                memory_ref = (n, train["in memory"])
            base = base or (n, median(train["reader"], "peak_rss_mb"))
            precision = train["reader"][0]["precision"]
            for mode, results in train.items():
                if not results:
                    train_rows.append(f"| {n} | – | in memory | skipped (needs {file_bytes(n) / 1e9:.1f} GB RAM; "
                                      "--in-memory-max) | | | | |")
                    continue
                rss = median(results, "peak_rss_mb")
                ratio = "–"
                if mode == "reader" and memory_ref:
                    ratios = [r["captions_per_s"] / m["captions_per_s"] for r, m in zip(results, memory_ref[1])]
                    ratio = f"{statistics.median(ratios):.2f}x" + ("" if memory_ref[0] == n else
                                                                   f" (vs {memory_ref[0]} in memory)")
                train_rows.append(f"| {n} | {median(results, 'caption_mb'):.1f} | {mode} | {rss:.0f} | "
                                  f"{100 * (rss / base[1] - 1):+.0f}% | {median(results, 'captions_per_s'):.0f} | "
                                  f"{ratio} | {median(results, 'open_s'):.2f} |")
    if not base:
        return
    per_image, batch_size = DEFAULTS["train"]["captions_per_image"], DEFAULTS["train"]["batch_size"]
    print(f"\n# 2. training: default attention decoder ({precision}), {args.train_warmup} warm-up + "
          f"{args.train_batches} timed batches of {batch_size} captions ({batch_size // per_image} images x "
          f"{per_image}), median of {args.train_rounds} rounds; {load_average()} at end")
    print(f"| images | caption arrays MB | features from | peak RSS MB | peak RSS vs {base[0]} reader | "
          "captions/s | reader / in memory captions/s | open/load s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(train_rows))


if __name__ == "__main__":
    main()
