"""The clean_text and tokenize steps: cleaned captions per image, then vocabulary and padded id sequences."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from captioner.data.datasets.raw import SPLITS, read_captions_csv
from captioner.core.errors import CaptionerError
from captioner.core.jsonfile import read_json
from captioner.data.text import RESERVED, Vocabulary, clean_caption


def clean_captions(captions_csv: Path, min_words: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Clean every caption of `captions.csv`; drop those shorter than `min_words`; return them and counts."""
    raw, empty = read_captions_csv(captions_csv)
    cleaned: dict[str, list[str]] = {}
    dropped = 0
    for image, captions in raw.items():
        kept = [c for c in (clean_caption(c) for c in captions) if len(c.split()) >= max(min_words, 1)]
        dropped += len(captions) - len(kept)
        if kept:
            cleaned[image] = kept
    stats = {"images": len(cleaned), "captions": sum(map(len, cleaned.values())),
             "dropped_short": dropped, "dropped_empty": empty, "images_without_captions": len(raw) - len(cleaned)}
    return cleaned, stats


def read_splits(path: Path) -> dict[str, list[str]]:
    """Load splits.json and check that it has the three split lists."""
    splits = read_json(path, "split file", "download")
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), list) for s in SPLITS):
        raise CaptionerError(f"{path}: expected lists under {', '.join(SPLITS)}")
    return splits


def read_captions(path: Path) -> dict[str, list[str]]:
    """Load captions.json (clean_text's output): image name -> its cleaned captions."""
    captions = read_json(path, "cleaned captions", "clean_text")
    if not isinstance(captions, dict) or any(not isinstance(c, list) for c in captions.values()):
        raise CaptionerError(f"{path}: expected an object mapping image names to lists of captions")
    return captions


def tokenize(
    captions: dict[str, list[str]], splits: dict[str, list[str]], min_count: int, max_length_percentile: float
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    """Vocabulary from the train captions only; per split, caption -> image index and padded token ids."""
    names = sorted({n for s in SPLITS for n in splits[s] if n in captions})
    train_captions = [c for n in splits["train"] for c in captions.get(n, [])]
    if not train_captions:
        raise CaptionerError("tokenize: the train split has no captions (check data/raw/report.json)")
    vocab = Vocabulary.build(train_captions, min_count=min_count, max_length_percentile=max_length_percentile)
    if len(vocab) == len(RESERVED):
        print(f"warning: no train word is seen tokenize.min_count={min_count} times: the vocabulary holds only "
              f"{', '.join(RESERVED)}, so every word becomes <unk> and the model cannot learn to caption", file=sys.stderr)
    position = {n: i for i, n in enumerate(names)}
    arrays: dict[str, np.ndarray] = {"names": np.array(names, dtype=str)}
    for split in SPLITS:
        pairs = [(position[n], c) for n in splits[split] if n in captions for c in captions[n]]
        arrays[f"{split}_image"] = np.array([p for p, _ in pairs], dtype=np.int32)
        arrays[f"{split}_tokens"] = vocab.encode([c for _, c in pairs])
        missing = [n for n in splits[split] if n not in captions]
        if missing:
            print(f"warning: {len(missing)} {split} images have no cleaned captions and were left out "
                  f"({', '.join(missing[:3])})", file=sys.stderr)
    return vocab, arrays
