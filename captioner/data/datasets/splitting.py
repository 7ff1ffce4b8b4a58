"""Which split each image goes to: the official lists, or a seeded random split for people's own images.

The random split orders images by a hash of (seed, name) and cuts that order at the requested fractions,
so it is deterministic, has exact sizes, and adding a few images moves only a few others between splits.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

from captioner.core.errors import CaptionerError
from captioner.core.params import where

SPLIT_CHOICES = ("official", "random")


def check_split_params(data: dict[str, Any]) -> None:
    """Refuse an unknown `data.split` or fractions that leave no room for train."""
    if data["split"] not in SPLIT_CHOICES:
        raise CaptionerError(f"{where('data.split')}: data.split '{data['split']}' is unknown (choose one of "
                             f"{', '.join(SPLIT_CHOICES)})")
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= data[key] < 1:
            raise CaptionerError(f"{where(f'data.{key}')}: data.{key} must be at least 0 and below 1, got {data[key]}")
    if data["val_fraction"] + data["test_fraction"] >= 1:
        raise CaptionerError(f"{where('data.test_fraction')}: data.val_fraction + data.test_fraction must be below 1 "
                             f"(train gets the rest), got {data['val_fraction']} + {data['test_fraction']}")


def random_split(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split `names` into train/val/test (each sorted) by the seeded hash order; fractions are rounded to images."""
    order = sorted(set(names), key=lambda n: (hashlib.sha256(f"{seed}\0{n}".encode()).hexdigest(), n))
    n_val, n_test = round(val_fraction * len(order)), round(test_fraction * len(order))
    return {
        "train": sorted(order[n_val + n_test:]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val:n_val + n_test]),
    }


def matched_images(
    captions: dict[str, list[str]], image_files: dict[str, Any], captions_file: str, images_dir: str
) -> list[str]:
    """The images that have both captions and a file; none at all is a one-line error naming both sides."""
    matched = sorted(n for n, caps in captions.items() if caps and n in image_files)
    if not matched:
        raise CaptionerError(
            f"{captions_file}: none of its {len(captions)} image names (e.g. {_example(list(captions))}) matches one "
            f"of the {len(image_files)} image files in {images_dir} (e.g. {_example(list(image_files))})"
        )
    return matched


def _example(names: set[str] | list[str]) -> str:
    """One name, for an error message."""
    return sorted(names)[0] if names else "none"


def choose_splits(
    data: dict[str, Any],
    captioned: list[str],
    official: dict[str, list[str]],
    official_name: str,
    where: str,
) -> dict[str, list[str]]:
    """The split lists for the `captioned` images (those with captions and a file), as `data.split` asks.

    `official` are the source's own lists (Flickr8k's, or the Karpathy file's); when none of the captioned
    images is in them under `data.split: official`, this is a one-line error, starting with `where`, that
    says to use `random`. `data` has passed `check_split_params`.
    """
    listed = {n for names in official.values() for n in names}
    if data["split"] == "random":
        if listed & set(captioned):
            print(f"warning: data.split random on images of the {official_name}: scores will not compare with "
                  f"published ones (data.split: official keeps its split)", file=sys.stderr)
        splits = random_split(captioned, data["val_fraction"], data["test_fraction"], data["split_seed"])
        if not splits["train"]:
            _refuse_empty_train(data, splits)
        return splits
    if not listed & set(captioned):
        raise CaptionerError(
            f"{where}: none of the {len(captioned)} captioned images (e.g. {_example(captioned)}) is in the "
            f"{official_name} (e.g. {_example(listed)}); for your own images set data.split: random"
        )
    return official


def _refuse_empty_train(data: dict[str, Any], splits: dict[str, list[str]]) -> None:
    """A random split whose rounded val and test take every image: one line naming the fraction to lower."""
    key = "val_fraction" if data["val_fraction"] >= data["test_fraction"] else "test_fraction"
    total = sum(len(names) for names in splits.values())
    raise CaptionerError(
        f"{where(f'data.{key}')}: data.split random on {total} captioned images gives val {len(splits['val'])}, "
        f"test {len(splits['test'])} and train none; lower data.{key} (now {data[key]}) so train keeps an image"
    )
