"""DVC stage `download`: turn the configured source (sample, folder, archive, kaggle) into data/raw/."""

from captioner.data.datasets import prepare_raw
from captioner.core.params import load_params
from captioner.core.stage import run_main, stage_args


def main() -> None:
    """Build the raw dataset that params.yaml's `data` section names."""
    args = stage_args(__doc__, inputs=[], outputs=["out"])
    dataset = prepare_raw(load_params(args.params)["data"], args.out)
    report = dataset.report
    print(f"{args.out}: {report['images']} images, {report['captions']} captions, splits {report['splits']}")


if __name__ == "__main__":
    run_main(main)
