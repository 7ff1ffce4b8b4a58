"""Flickr8k (or your own images in its layout) from an unpacked folder, split as `data.split` asks.

Kaggle layout: `Images/` + `captions.txt` or `captions.csv` (CSV `image,caption`). Original layout:
`Flicker8k_Dataset/` (or `Images/`) + `Flickr8k.token.txt` (`name.jpg#k<TAB>caption`). Either may sit a
few folders down. `data.split: official` uses the official 6000/1000/1000 lists, `random` a seeded split.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from captioner.data.datasets.raw import (RawDataset, finalize, links_leaving, read_captions_csv,
                                         read_token_file)
from captioner.data.datasets.splitting import choose_splits, matched_images
from captioner.core.errors import CaptionerError

IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
CAPTION_FILES = ("captions.txt", "captions.csv", "Flickr8k.token.txt")
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
MAX_DEPTH = 3


def official_splits() -> dict[str, list[str]]:
    """The official Flickr8k split lists shipped inside the package."""
    folder = resources.files("captioner.data.datasets") / "splits"
    return {
        split: [line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        for split, name in SPLIT_FILES.items()
    }


def _find(root: Path, names: tuple[str, ...], want_dir: bool) -> Path | None:
    """The shallowest path under `root` (at most MAX_DEPTH down) named one of `names`, in `names` order."""
    for depth in range(MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth + ["{name}"])
        for name in names:
            for hit in sorted(root.glob(pattern.format(name=name))):
                if hit.is_dir() == want_dir and not any(p.startswith(".") for p in hit.relative_to(root).parts):
                    return hit
    return None


def load_folder(root: Path, data: dict[str, Any], shown_as: str | None = None) -> RawDataset:
    """Read a Flickr8k-layout folder and split it; images missing from the folder are dropped and reported.

    `shown_as` names the folder in error messages (the archive, when `root` is where it was unpacked).
    """
    shown = shown_as or str(root)
    if not root.exists():
        raise CaptionerError(f"data.path: folder not found: {root}")
    if not root.is_dir():
        raise CaptionerError(f"data.path: not a folder: {root} (use data.source: archive for .zip/.tar files)")
    captions_file = _find(root, CAPTION_FILES, want_dir=False)
    if captions_file is None:
        raise CaptionerError(f"{shown}: no captions file found (expected one of {', '.join(CAPTION_FILES)})")
    images_dir = _find(root, IMAGE_DIRS, want_dir=True)
    if images_dir is None:
        raise CaptionerError(f"{shown}: no images folder found (expected one of {', '.join(IMAGE_DIRS)})")
    if captions_file.name != "Flickr8k.token.txt":
        captions, empty = read_captions_csv(captions_file)
        layout = "kaggle"
    else:
        captions, empty = read_token_file(captions_file)
        layout = "original"
    image_files, outside = links_leaving(
        {p.name: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}, images_dir
    )
    report = {
        "source_path": str(root),
        "layout": layout,
        "captions_file": str(captions_file.relative_to(root)),
        "images_dir": str(images_dir.relative_to(root)),
        "empty_captions_dropped": empty,
        "links_leaving_images": outside,
    }
    captioned = matched_images(captions, image_files, f"{shown}: {report['captions_file']}",
                               f"{report['images_dir']}/")
    splits = choose_splits(data, captioned, official_splits(), "official Flickr8k split", shown)
    report["split"] = data["split"]
    return finalize(captions, splits, image_files, report)
