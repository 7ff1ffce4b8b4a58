"""Prediction speed: one photo from command start, warm single-image latency, images/s on a folder, decoding.

Uses the bundle at --model (default models/captioner); without one, a stand-in bundle (efficientnet_lite0
ImageNet encoder, untrained merge decoder of the default size, 2900-word vocabulary) has the same cost.

    python benchmarks/predict.py [--model DIR] [--photo FILE] [--folder DIR] [--images 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "flickr8k"


def stand_in_bundle(directory: Path) -> Path:
    """An untrained bundle shaped like the default Flickr8k one (timing only; captions are nonsense)."""
    from captioner.bundle import make_config, save_bundle
    from captioner.model import DecoderSpec, build_decoder
    from captioner.params import DEFAULTS
    from captioner.text import RESERVED, Vocabulary

    p = DEFAULTS["train"]
    vocab = Vocabulary(tokens=(*RESERVED, *(f"w{i}" for i in range(2896))), max_length=24)
    model = build_decoder(DecoderSpec("merge", len(vocab), (1280,), p["embedding_dim"], p["units"], p["dropout"]))
    config = make_config(
        {"name": "efficientnet_lite0", "weights": "imagenet", "input_size": 224, "output": "pooled"},
        (1280,),
        {"kind": "merge", "embedding_dim": p["embedding_dim"], "units": p["units"], "dropout": p["dropout"],
         "vocab_size": len(vocab)},
        {"beam_size": 3, "max_length": 24, "length_alpha": 1.0},
    )
    save_bundle(directory, model, vocab, config)
    return directory


def default_photos(tmp: Path, count: int) -> list[Path]:
    """Real photos from ../shared/flickr8k when present, else synthetic 500x375 JPEGs."""
    for folder in (SHARED / "Images", SHARED / "photos"):
        if folder.is_dir():
            found = sorted(folder.glob("*.jpg"))[:count]
            if found:
                return found
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = tmp / f"photo{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def cold_start(model: Path, photo: Path, repeats: int) -> float:
    """Median seconds of `captioner predict PHOTO` from process start to exit."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captioner.cli", "predict", str(photo), "--model", str(model)],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/captioner")
    parser.add_argument("--photo", default=None, help="photo for the single-image timings")
    parser.add_argument("--folder", default=None, help="folder for images/s (default: Flickr8k images or synthetic)")
    parser.add_argument("--images", type=int, default=200, help="images from the folder")
    parser.add_argument("--decode-images", type=int, default=1000, help="images for the decoding-only timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="captioner-bench-"))
    model = Path(args.model)
    if not (model / "config.json").is_file():
        print(f"{model}: no bundle; timing a stand-in bundle of the default size", file=sys.stderr)
        model = stand_in_bundle(tmp / "bundle")
    folder_paths = sorted(Path(args.folder).iterdir())[: args.images] if args.folder else default_photos(tmp, args.images)
    photo = Path(args.photo) if args.photo else (sorted((SHARED / "photos").glob("*.jpg")) or folder_paths)[0]

    cold = cold_start(model, photo, args.repeats)

    import tensorflow as tf

    from captioner.bundle import load_bundle
    from captioner.decode import CaptionDecoder
    from captioner.encoders import build_encoder, get_spec
    from captioner.images import image_batches
    from captioner.model import prepare_features

    bundle = load_bundle(model)
    enc = bundle.config["encoder"]
    beam = int(bundle.config["decoding"]["beam_size"])
    encoder = build_encoder(enc["name"], enc["weights"], enc["output"])
    infer = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    size = get_spec(enc["name"]).input_size
    decoder = CaptionDecoder(bundle.model, bundle.vocab.max_length)

    def caption(paths: list[Path], batch: int) -> list[list[int]]:
        feats = [infer(images).numpy() for _, images in image_batches(paths, size, batch)]
        return decoder.beam(prepare_features(np.concatenate(feats), bundle.decoder_kind, "features"), beam)

    caption([photo], 1)  # warm-up traces
    warm = []
    for _ in range(max(args.repeats, 5)):
        start = time.perf_counter()
        caption([photo], 1)
        warm.append(time.perf_counter() - start)
    folder_rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        caption(folder_paths, 32)
        folder_rates.append(len(folder_paths) / (time.perf_counter() - start))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captioner.cli", "predict", *map(str, folder_paths), "--model", str(model)],
                   check=True, capture_output=True)
    cli_rate = len(folder_paths) / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    feats = rng.random((args.decode_images, *bundle.model.inputs[0].shape[1:]), dtype=np.float32)
    decoder.beam(feats[:8], beam)
    decode_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        decoder.beam(feats, beam)
        decode_times.append(time.perf_counter() - start)
    decode_s = statistics.median(decode_times)

    print(f"bundle {model} ({bundle.decoder_kind}, vocab {len(bundle.vocab)}, encoder {enc['name']} {enc['output']}); "
          f"beam {beam}; medians of {args.repeats}+ runs")
    rows = [
        ("one photo, command start to caption (s)", cold, 5.0, "<"),
        ("warm single-image latency (s)", statistics.median(warm), None, ""),
        (f"folder of {len(folder_paths)} images, in process (images/s)", statistics.median(folder_rates), None, ""),
        (f"folder of {len(folder_paths)} images, `captioner predict` (images/s)", cli_rate, None, ""),
        (f"decode {args.decode_images} images' features, beam {beam} (s)", decode_s, 60.0, "<"),
    ]
    print(f"{'measure':<58}{'median':>10}{'target':>10}{'ratio':>8}")
    for label, value, target, _ in rows:
        ratio = f"{value / target:.2f}" if target else ""
        print(f"{label:<58}{value:>10.3f}{(f'{target:.0f}' if target else ''):>10}{ratio:>8}")
    print(f"cold start / warm latency: {cold / statistics.median(warm):.1f}x")


if __name__ == "__main__":
    main()
