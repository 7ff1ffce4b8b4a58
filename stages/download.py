"""DVC stage `download`: turn the configured source (sample, folder, archive, kaggle) into data/raw/."""

from pathlib import Path

from captioner.datasets import prepare_raw
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    params = load_params("params.yaml")
    dataset = prepare_raw(params["data"], Path("data/raw"))
    report = dataset.report
    print(f"data/raw: {report['images']} images, {report['captions']} captions, splits {report['splits']}")


if __name__ == "__main__":
    run_main(main)
