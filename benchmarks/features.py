"""Feature-extraction speed: the stage pipeline vs the classic one-image loop vs the CPU's matmul roofline.

One row per encoder and `features.precision` (float32 and bfloat16 by default); bfloat16 rows also give
the smallest cosine similarity of their features to float32's on the first batch (the roofline column
stays the float32 matmul roofline, so bfloat16 can exceed 100%).

For each encoder, every round measures (a) the stage pipeline (tf.data decode + resize, batched
inference), (b) the classic tutorial loop (one `load_img` + one `model.predict` per image) and (c) the
roofline: this CPU's measured float32 matmul throughput divided by the model's FLOPs per image. The
table shows medians over rounds; ratios are taken within each round, then their median.

    python benchmarks/features.py [--images DIR] [--n 64] [--classic-n 16] [--rounds 3] [--precisions float32,bfloat16]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import psutil
import tensorflow as tf
from PIL import Image

from captioner.vision.encoders import build_encoder, get_spec
from captioner.vision.features import encode_images

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "flickr8k" / "Images"
WEIGHTS = {"vgg16": "none", "efficientnet_lite0": "imagenet"}
MATMUL_SIZE = 2048


def model_flops(model: keras.Model) -> float:
    """Floating-point operations (2 per multiply-add) of one image through the conv and dense layers."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, channels, multiplier = layer.kernel.shape
            total += 2.0 * np.prod(layer.output.shape[1:3]) * kh * kw * channels * multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            total += 2.0 * np.prod(layer.output.shape[1:3]) * kh * kw * c_in * c_out / layer.groups
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += 2.0 * np.prod(layer.output.shape[1:-1] or [1]) * c_in * c_out
    return total


def matmul_gflops() -> float:
    """Best float32 matmul throughput of numpy and TensorFlow on this machine, GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32)
    t = tf.constant(a)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    best = 0.0
    for run in (lambda: a @ a, lambda: matmul(t).numpy()):
        run()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        best = max(best, 2.0 * MATMUL_SIZE**3 / statistics.median(times) / 1e9)
    return best


def pipeline_rate(model: keras.Model, paths: list[Path], size: int, batch_size: int) -> float:
    """Images/s of the stage's pipeline (features.encode_images: tf.data decode + resize, batched inference)."""
    start = time.perf_counter()
    done, _ = encode_images(model, paths, size, batch_size, np.dtype(np.float32), progress=False)
    return len(done) / (time.perf_counter() - start)


def classic_rate(model: keras.Model, paths: list[Path], size: int) -> float:
    """Images/s of the tutorial loop: PIL load_img (squash to size), then one model.predict per image."""
    start = time.perf_counter()
    for path in paths:
        image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
        model.predict(image[None], verbose=0)
    return len(paths) / (time.perf_counter() - start)


def synthetic_images(folder: Path, n: int) -> list[Path]:
    """Random 500x375 JPEGs (Flickr8k-like size) for machines without the reference images."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def bench_encoder(
    name: str, paths: list[Path], classic_n: int, batch_size: int, rounds: int, precision: str
) -> dict[str, float]:
    """Interleaved rounds of pipeline, classic loop and matmul; medians of rates and of per-round ratios."""
    spec = get_spec(name)
    model = build_encoder(name, WEIGHTS[name], "pooled", precision)
    flops = model_flops(model)
    _, sample = encode_images(model, paths[:batch_size], spec.input_size, batch_size, np.float32, progress=False)
    pipeline_rate(model, paths[:batch_size], spec.input_size, batch_size)
    classic_rate(model, paths[:2], spec.input_size)
    rows = []
    for _ in range(rounds):
        a = pipeline_rate(model, paths, spec.input_size, batch_size)
        b = classic_rate(model, paths[:classic_n], spec.input_size)
        c = matmul_gflops() * 1e9 / flops
        rows.append((a, b, c, a / b, a / c))
    med = [statistics.median(col) for col in zip(*rows)]
    return {"gflops": flops / 1e9, "a": med[0], "b": med[1], "c": med[2], "a/b": med[3], "a/c": med[4],
            "sample": sample}


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-image cosine similarity between two feature batches."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None)
    parser.add_argument("--n", type=int, default=64, help="images per pipeline run")
    parser.add_argument("--classic-n", type=int, default=16, help="images per classic-loop run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encoders", default="vgg16,efficientnet_lite0")
    parser.add_argument("--precisions", default="float32,bfloat16", help="features.precision values, float32 first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images is None:
            paths, source = synthetic_images(Path(tmp), args.n), "synthetic 500x375 JPEGs"
        else:
            paths, source = sorted(p for p in args.images.iterdir() if p.is_file())[: args.n], str(args.images)
        print(f"images: {len(paths)} from {source}; classic loop on {min(args.classic_n, len(paths))}; "
              f"batch {args.batch_size}; median of {args.rounds} rounds; {psutil.cpu_count()} CPUs")
        header = (f"{'encoder':<20}{'precision':>10}{'GFLOP/img':>10}{'(a) pipeline':>14}{'(b) classic':>13}"
                  f"{'(c) roofline':>14}{'a/b':>7}{'a/c':>7}{'cos vs f32':>11}")
        results = [(name, precision, bench_encoder(name, paths, args.classic_n, args.batch_size, args.rounds, precision))
                   for name in args.encoders.split(",") for precision in args.precisions.split(",")]
    print(header + "\n" + "-" * len(header))
    exact = {name: r["sample"] for name, precision, r in results if precision == "float32"}
    for name, precision, r in results:
        cosine = f"{min_cosine(exact[name], r['sample']):.4f}" if name in exact else "-"
        print(f"{name:<20}{precision:>10}{r['gflops']:>10.2f}{r['a']:>10.1f} i/s{r['b']:>9.1f} i/s{r['c']:>10.1f} i/s"
              f"{r['a/b']:>7.2f}{r['a/c']:>7.0%}{cosine:>11}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; roofline = best of "
          f"numpy/TensorFlow {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul GFLOP/s / model GFLOP per image")


if __name__ == "__main__":
    main()
