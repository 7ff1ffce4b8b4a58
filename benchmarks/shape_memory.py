"""Memory growth of training steps whose packed row count changes every batch, exact vs bucketed.

The training model packs the logits of real target tokens only, so their row count P changes from batch
to batch. oneDNN compiles a bfloat16 matmul per shape it meets and keeps it (with reordered weights) in
a cache, so one new P per step grew the process by about a megabyte a step. `captioner.model.decoders.packed_rows`
rounds P up to a multiple of `PACK_ROWS`, so batches share a few shapes. This script trains the default
attention decoder (`train` defaults of `captioner.core.params`, Flickr8k's vocabulary size and grid) on
synthetic batches of 160 captions of one fixed width whose real lengths are random, so only P changes,
with `PACK_ROWS` = 1 (exact rows, the previous behaviour) and the default, in float32 and bfloat16.
Each row runs in a fresh process; RSS is read after the warm-up batches and after the measured ones.

    python benchmarks/shape_memory.py [--warmup 20] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

VOCAB = 2532  # Flickr8k's vocabulary at min_count 5
GRID = (7, 7, 1280)  # efficientnet_lite0's grid
WIDTH = 20  # caption width of every batch (<start> + words + <end>, 0-padded)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure(precision: str, pack_rows: int, warmup: int, batches: int) -> dict:
    """Train `warmup` + `batches` steps in this process; RSS after each phase and distinct P seen."""
    import keras
    import numpy as np

    import captioner.model.decoders as m
    from captioner.core.params import DEFAULTS
    from captioner.core.precision import keras_policy
    from captioner.data.text import END_ID, START_ID
    from captioner.model.training import decoder_spec

    m.PACK_ROWS = pack_rows
    params = DEFAULTS["train"]
    keras.utils.set_random_seed(0)
    model = m.build_decoder(decoder_spec(params, VOCAB, GRID), keras_policy(precision))
    model.compile(keras.optimizers.Adam(1e-3), loss=m.caption_loss(), jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, *GRID)).astype("float32")
    shapes: set[int] = set()

    def step() -> None:
        lengths = rng.integers(6, WIDTH, size=160)  # words + <end> after <start>
        tokens = np.zeros((160, WIDTH + 1), dtype="int32")
        for row, n in enumerate(lengths):
            tokens[row, 0] = START_ID
            tokens[row, 1:n] = rng.integers(4, VOCAB, size=n - 1)
            tokens[row, n] = END_ID
        shapes.add(m.packed_rows(int((tokens[:, 1:] != 0).sum())))
        model.train_on_batch([images, tokens[:, :-1]], tokens[:, 1:])

    for _ in range(warmup):
        step()
    after_warmup = rss_mb()
    for _ in range(batches):
        step()
    after = rss_mb()
    return {"precision": precision, "pack_rows": pack_rows, "shapes": len(shapes), "warm_mb": after_warmup,
            "end_mb": after, "growth_mb": after - after_warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "PACK_ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.warmup, args.batches)
        print(json.dumps(result))
        return
    from captioner.model.decoders import PACK_ROWS

    rows = []
    for precision in ("bfloat16", "float32"):
        for pack_rows in (1, PACK_ROWS):
            done = subprocess.run(
                [sys.executable, __file__, "--one", precision, str(pack_rows), "--warmup", str(args.warmup),
                 "--batches", str(args.batches)],
                capture_output=True, text=True, check=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.batches} training steps after {args.warmup} warm-up steps, 160 captions of width {WIDTH}, "
          f"random lengths\n")
    print("| precision | packed rows | distinct shapes | RSS after warm-up | RSS at end | growth | per step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = "exact (multiple of 1)" if r["pack_rows"] == 1 else f"multiple of {r['pack_rows']}"
        print(f"| {r['precision']} | {label} | {r['shapes']} | {r['warm_mb']:.0f} MB | {r['end_mb']:.0f} MB | "
              f"{r['growth_mb']:+.0f} MB | {r['growth_mb'] / args.batches:+.2f} MB |")


if __name__ == "__main__":
    main()
