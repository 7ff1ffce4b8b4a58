"""DVC stage `extract_features`: data/raw/Images -> data/features/ (features.h5 + meta.json)."""

from pathlib import Path

from captioner.features import run_extraction
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    params = load_params("params.yaml")
    meta = run_extraction(Path("data/raw/Images"), Path("data/features"), params["features"])
    print(
        f"data/features: {meta['num_images']} images, {meta['encoder']} {meta['output']} "
        f"{tuple(meta['feature_shape'])} {meta['dtype']}, {meta['num_skipped']} skipped"
    )


if __name__ == "__main__":
    run_main(main)
