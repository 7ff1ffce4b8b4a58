"""DVC stage `tokenize`: vocabulary from the train captions and padded id sequences for every split."""

import numpy as np

from captioner.core.atomic import atomic_path, write_json
from captioner.data.corpus import read_captions, read_splits, tokenize
from captioner.core.params import load_params
from captioner.core.stage import run_main, stage_args


def main() -> None:
    """Build vocab.json and sequences.npz from the cleaned captions and the split lists."""
    args = stage_args(__doc__, inputs=["captions", "splits"], outputs=["vocab", "sequences"])
    params = load_params(args.params)["tokenize"]
    captions = read_captions(args.captions)
    splits = read_splits(args.splits)
    vocab, arrays = tokenize(captions, splits, params["min_count"], params["max_length_percentile"])
    write_json(args.vocab, vocab.to_json())
    with atomic_path(args.sequences) as tmp:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)
    counts = {s: len(arrays[f"{s}_tokens"]) for s in ("train", "val", "test")}
    print(f"vocabulary {len(vocab)} tokens, max_length {vocab.max_length}, captions per split {counts}")


if __name__ == "__main__":
    run_main(main)
