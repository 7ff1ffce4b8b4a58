"""DVC stage `extract_features`: data/raw/Images -> data/features/ (features.h5 + meta.json), resumable."""

from pathlib import Path

import tensorflow as tf

from captioner.features import run_extraction
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    params = load_params()
    gpus = tf.config.list_physical_devices("GPU")
    meta = run_extraction(Path("data/raw/Images"), Path("data/features"), params["features"])
    print(
        f"data/features: {meta['num_images']} images, {meta['encoder']} {meta['output']} "
        f"{tuple(meta['feature_shape'])} {meta['dtype']}, {meta['num_skipped']} skipped, "
        f"on {f'GPU:0 ({len(gpus)} visible)' if gpus else 'CPU'}"
    )


if __name__ == "__main__":
    run_main(main)
