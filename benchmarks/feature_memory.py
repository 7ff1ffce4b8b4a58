"""Feature reads per batch vs all features in memory: peak RSS and rows/s for 7k, 30k and 120k images.

Writes synthetic grid feature files (7x7x1280 float16, the default encoder's grid, row-chunked like the
stage writes them) into a temporary folder, one size at a time, and deletes each after measuring.
Every measurement runs in a fresh process that reads random batches of 64 rows:

- `reader, cold`: `FeatureReader.rows` after the file's pages were dropped from the page cache
  (`posix_fadvise DONTNEED` on that file only), so rows come from the disk;
- `reader, warm`: the same with the file in the page cache (what later epochs see when RAM allows);
- `in memory`: `load_features` first (the whole array), then numpy indexing; only up to
  `--in-memory-max` images, because 120k images need 15 GB of RAM.

Peak RSS is the process's high-water mark (VmHWM, imports included). The table shows medians over rounds and
the reader's rows/s as a ratio of in-memory rows/s measured in the same round.

    python benchmarks/feature_memory.py [--sizes 7000 30000 120000] [--rounds 3] [--batches 300]
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

from captioner.feature_store import FeatureReader, load_features, write_features  # noqa: E402

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


def measure(mode: str, path: Path, batches: int) -> dict:
    """Run `child` in a fresh interpreter and return its result."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), "--batches", str(batches)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 30000, 120000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--in-memory-max", type=int, default=30000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.batches)))
        return
    print(f"# feature reads: random batches of {BATCH} rows of {SHAPE} float16, {args.batches} batches, "
          f"median of {args.rounds} rounds")
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
                runs["reader, cold"].append(measure("reader", path, args.batches))
                runs["reader, warm"].append(measure("reader", path, args.batches))
                if n <= args.in_memory_max:
                    runs["in memory"].append(measure("memory", path, args.batches))
            for mode, results in runs.items():
                if not results:
                    print(f"| {n} | {path.stat().st_size / 1e9:.2f} | {wrote:.0f} | {mode} | skipped (needs "
                          f"{file_bytes(n) / 1e9:.0f} GB RAM; --in-memory-max) | | | |")
                    continue
                ratios = [r["rows_per_s"] / m["rows_per_s"] for r, m in zip(results, runs["in memory"])]
                ratio = f"{statistics.median(ratios):.2f}x" if ratios and mode != "in memory" else "–"
                print(f"| {n} | {path.stat().st_size / 1e9:.2f} | {wrote:.0f} | {mode} | "
                      f"{statistics.median(r['peak_rss_mb'] for r in results):.0f} | "
                      f"{statistics.median(r['rows_per_s'] for r in results):.0f} | {ratio} | "
                      f"{statistics.median(r['open_s'] for r in results):.2f} |", flush=True)


if __name__ == "__main__":
    main()
