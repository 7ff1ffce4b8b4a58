"""Extraction cost per `features.encoder`: the stage's own extraction (build, decode, resize, encode, write) per choice.

One row per encoder (single EfficientNet-Lite variants and fusions named with `+`): input size, feature
shape, GFLOP per image (conv and dense layers, and a fusion's resizing matrix products: about 7% of its
total), seconds for the whole `run_extraction` of the images (as the extract_features stage runs it,
model build and the HDF5 write included), images/s, the ratio of that time to the first encoder's in the
same round (`vs first`: a shared machine's load moves both), and the feature file's size, also per 1000
images and scaled to the 7000 images of the development Flickr8k copy (`../shared/flickr8k`). Times are
medians over rounds.

The images default to the embedded sample (`data/raw/Images` after `dvc repro`: 224-px scenes), so the
larger encoders see upscaled images there: their cost is measured, not their benefit.

    python benchmarks/encoders.py [--images data/raw/Images] [--n 400] [--rounds 3] [--output grid]
                                  [--encoders efficientnet_lite0,efficientnet_lite1,...]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import tensorflow as tf
from features import model_flops

from captioner.vision.encoders import build_encoder, get_spec
from captioner.vision.features import run_extraction
from captioner.vision.resize import AntialiasResize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENCODERS = ("efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,"
                    "efficientnet_lite0+efficientnet_lite1,efficientnet_lite0+efficientnet_lite2")
FLICKR8K_IMAGES = 7000  # train + val images of the development Flickr8k copy


def resize_flops(model) -> float:
    """Floating-point operations of a fused encoder's AntialiasResize layers (two matrix products each) per image."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, AntialiasResize):
            _, height, width, channels = layer.input.shape
            total += 2.0 * channels * (width * height * layer.height + layer.height * width * layer.width)
    return total


def extract_once(images: Path, out: Path, encoder: str, output: str, batch_size: int) -> tuple[float, int]:
    """Seconds of one `run_extraction` into `out` (removed first) and the size of its features.h5 in bytes."""
    shutil.rmtree(out, ignore_errors=True)
    params = {"encoder": encoder, "weights": "imagenet", "output": output, "batch_size": batch_size,
              "precision": "float32"}
    start = time.perf_counter()
    run_extraction(images, out, params)
    seconds = time.perf_counter() - start
    return seconds, (out / "features.h5").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "raw" / "Images")
    parser.add_argument("--n", type=int, default=400, help="images (the first n by name)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="grid", choices=("grid", "pooled"))
    parser.add_argument("--encoders", default=DEFAULT_ENCODERS)
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # every extraction builds its own model: TensorFlow warns about retracing
    names = args.encoders.split(",")
    paths = sorted(p for p in args.images.iterdir() if p.is_file() and not p.name.startswith("."))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        folder, warm = Path(tmp) / "Images", Path(tmp) / "Warm-up"
        folder.mkdir()
        warm.mkdir()
        for i, path in enumerate(paths):
            os.symlink(path.resolve(), folder / path.name)
            if i < args.batch_size:
                os.symlink(path.resolve(), warm / path.name)
        models = {name: build_encoder(name, "imagenet", args.output) for name in names}
        flops = {name: model_flops(model) + resize_flops(model) for name, model in models.items()}
        for name in names:  # warm-up on one batch: weights converted and cached, TensorFlow's first graphs built
            extract_once(warm, Path(tmp) / "warm", name, args.output, args.batch_size)
        times: dict[str, list[float]] = {name: [] for name in names}
        ratios: dict[str, list[float]] = {name: [] for name in names}
        sizes: dict[str, int] = {}
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for name in names:
                seconds, sizes[name] = extract_once(folder, Path(tmp) / "out", name, args.output, args.batch_size)
                times[name].append(seconds)
            for name in names:
                ratios[name].append(times[name][-1] / times[names[0]][-1])
    print(f"images: {len(paths)} from {args.images}; output {args.output}; batch {args.batch_size}; float32; "
          f"median of {args.rounds} rounds; {psutil.cpu_count()} CPUs, load average {load:.1f} at the start")
    header = (f"{'encoder':<40}{'input':>6}{'features':>14}{'GFLOP/img':>10}{'seconds':>9}{'img/s':>7}"
              f"{'vs first':>12}{'file MB':>9}{'MB/1k img':>10}{'7k img GB':>12}")
    print(header + "\n" + "-" * len(header))
    for name in names:
        spec = get_spec(name)
        shape = "x".join(map(str, spec.grid_shape if args.output == "grid" else (spec.pooled_dim,)))
        seconds = statistics.median(times[name])
        per_image = sizes[name] / len(paths)
        print(f"{name:<40}{spec.input_size:>6}{shape:>14}{flops[name] / 1e9:>10.2f}{seconds:>9.1f}"
              f"{len(paths) / seconds:>7.1f}{statistics.median(ratios[name]):>12.2f}{sizes[name] / 1e6:>9.1f}"
              f"{per_image * 1000 / 1e6:>10.1f}{per_image * FLICKR8K_IMAGES / 1e9:>12.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          "seconds = the whole run_extraction (model build, decode + resize, encode, features.h5 write)")


if __name__ == "__main__":
    main()
