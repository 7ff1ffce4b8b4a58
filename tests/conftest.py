"""Shared fixtures: the project root, and tiny Flickr8k-shaped folders made from the project's own images."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.data.datasets.flickr8k import official_splits

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("captioner", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc", ".dvcignore", ".gitignore")


@pytest.fixture
def root() -> Path:
    return ROOT


def copy_project(dest: Path) -> Path:
    """Copy the project's pipeline files (not data or models) into `dest`, to run stages there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def save_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    """Write a small random-colour JPEG (or PNG, by suffix)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def flickr_names() -> dict[str, list[str]]:
    """A few real official-split image names: 4 train, 2 val, 2 test."""
    splits = official_splits()
    return {"train": splits["train"][:4], "val": splits["val"][:2], "test": splits["test"][:2]}


def captions_for(name: str, k: int = 5) -> list[str]:
    return [f"A dog number {i} runs , on the grass ." for i in range(k)]


def make_kaggle_folder(folder: Path, drop: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """A Kaggle-layout Flickr8k folder (Images/ + captions.txt) with 8 official-split images."""
    names = flickr_names()
    (folder / "Images").mkdir(parents=True)
    with (folder / "captions.txt").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i, name in enumerate(n for s in names.values() for n in s):
            if name not in drop:
                save_image(folder / "Images" / name, i)
            writer.writerows([name, c] for c in captions_for(name))
    return names


def make_original_folder(folder: Path) -> dict[str, list[str]]:
    """An original-layout folder (Flicker8k_Dataset/ + Flickr8k.token.txt with the `.jpg.1` quirk)."""
    names = flickr_names()
    (folder / "Flicker8k_Dataset").mkdir(parents=True)
    lines = []
    for i, name in enumerate(n for s in names.values() for n in s):
        save_image(folder / "Flicker8k_Dataset" / name, i)
        lines += [f"{name}#{k}\t{c}" for k, c in enumerate(captions_for(name))]
    lines += [f"2258277193_586949ec62.jpg.1#{k}\tpeople waiting" for k in range(5)]
    (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return names
