"""Decoding time of ensembles of 1, 2 and 3 members, Keras and LiteRT, on stand-in decoders of the default size.

Untrained attention decoders shaped like the default Flickr8k one (7x7x1280 grid, 2900 words, `train` defaults),
decoding random grid features with beam 3 for `max_length - 1` = 14 steps (an untrained decoder never says <end>;
a trained one's beams end after about 12 words). The encoder is left out: it runs once whatever the member count.
Each member count is timed `--repeats` times after a warm-up; the median is printed.

    python benchmarks/ensemble.py [--images 100] [--members 1 2 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
GRID = (7, 7, 1280)
VOCAB = 2900
MAX_LENGTH = 15


def members(count: int) -> list:
    """`count` untrained default-size attention decoders, seeds 0..count-1."""
    import keras

    from captioner.core.params import DEFAULTS
    from captioner.model.decoders import DecoderSpec, build_decoder

    p = DEFAULTS["train"]
    spec = DecoderSpec("attention", VOCAB, GRID, p["embedding_dim"], p["units"], p["dropout"], p["attention_heads"],
                       p["output_units"])
    out = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        out.append(build_decoder(spec))
    return out


def lite_decoder(models: list, folder: Path):
    """A LiteDecoder on the ensemble's init/step exported as captioner.tflite does (a pass-through encoder)."""
    import keras

    from captioner.model.litert import LiteDecoder, LiteRuntime, litert_bytes

    image = keras.Input(GRID, name="image")
    encoder = keras.Model(image, keras.layers.Identity(name="same")(image))
    path = folder / f"ensemble{len(models)}.tflite"
    path.write_bytes(litert_bytes(encoder, models[0] if len(models) == 1 else models))
    return LiteDecoder(LiteRuntime(path), MAX_LENGTH, attention=True)


def timed(decoder, features: np.ndarray, repeats: int) -> float:
    """Median seconds of a beam-3 search over `features`, after one warm-up call."""
    decoder.beam_search(features[:2], 3)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decoder.beam_search(features, 3)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from captioner.model.decode import CaptionDecoder

    features = np.random.default_rng(0).normal(size=(args.images, *GRID)).astype(np.float16)
    models = members(max(args.members))
    print(f"{args.images} images, beam 3, {MAX_LENGTH - 1} steps, CPUs: {os.cpu_count()}")
    print("members | keras s | litert s | keras img/s | litert img/s")
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.members:
            chosen = models[0] if count == 1 else models[:count]  # one member: the single-decoder path
            keras_s = timed(CaptionDecoder(chosen, MAX_LENGTH, attention=True), features, args.repeats)
            lite_s = timed(lite_decoder(models[:count], Path(tmp)), features, args.repeats)
            print(f"{count:7d} | {keras_s:7.2f} | {lite_s:8.2f} | {args.images / keras_s:11.1f} | "
                  f"{args.images / lite_s:12.1f}", flush=True)


if __name__ == "__main__":
    main()
