"""DVC stage `tokenize`: vocabulary from the train captions and padded id sequences for every split."""

from pathlib import Path

import numpy as np

from captioner.atomic import atomic_path, write_json
from captioner.corpus import read_splits, tokenize
from captioner.jsonfile import read_json
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    params = load_params("params.yaml")["tokenize"]
    captions = read_json(Path("data/processed/captions.json"), "cleaned captions", "clean_text")
    splits = read_splits(Path("data/raw/splits.json"))
    vocab, arrays = tokenize(captions, splits, params["min_count"], params["max_length_percentile"])
    out = Path("data/processed")
    write_json(out / "vocab.json", vocab.to_json())
    with atomic_path(out / "sequences.npz") as tmp:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)
    counts = {s: len(arrays[f"{s}_tokens"]) for s in ("train", "val", "test")}
    print(f"vocabulary {len(vocab)} tokens, max_length {vocab.max_length}, captions per split {counts}")


if __name__ == "__main__":
    run_main(main)
