"""DVC stage `clean_text`: data/raw/captions.csv -> data/processed/captions.json (cleaned captions per image)."""

from pathlib import Path

from captioner.atomic import write_json
from captioner.corpus import clean_captions
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    params = load_params("params.yaml")
    captions, stats = clean_captions(Path("data/raw/captions.csv"), params["text"]["min_words"])
    write_json(Path("data/processed/captions.json"), captions)
    print(f"data/processed/captions.json: {stats}")


if __name__ == "__main__":
    run_main(main)
