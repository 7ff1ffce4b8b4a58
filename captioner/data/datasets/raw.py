"""The raw dataset every source is turned into, and the writer of `data/raw/`.

`data/raw/` holds `Images/` (the usable images), `captions.csv` (header `image,caption`, one row per
caption), `splits.json` ({"train", "val", "test"} -> image names) and `report.json` (what was dropped).
"""

from __future__ import annotations

import codecs
import csv
import io
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from captioner.core.atomic import atomic_dir, write_json
from captioner.core.errors import CaptionerError, printable

SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5


@dataclass
class RawDataset:
    """Captions per image, the split lists, and where each image file is."""

    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    image_files: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)


def read_text(path: Path) -> str:
    """A captions file as text: UTF-8 (a byte order mark is dropped); other bytes are an error naming the line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CaptionerError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from exc


def read_captions_csv(path: Path) -> tuple[dict[str, list[str]], int]:
    """Read an `image,caption` CSV into {image: [captions]}; returns it and the number of empty captions."""
    captions: dict[str, list[str]] = {}
    empty = 0
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise CaptionerError(f"{path}: empty captions file (expected a header 'image,caption')")
        columns = [h.strip().lower() for h in header]
        if "image" not in columns or "caption" not in columns:
            raise CaptionerError(f"{path}:1: header must have columns 'image' and 'caption', got {header}")
        i_image, i_caption = columns.index("image"), columns.index("caption")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) <= max(i_image, i_caption):
                raise CaptionerError(f"{path}:{line}: expected columns image,caption, got {row}")
            image = row[i_image].strip()
            caption = ",".join(row[i_caption:]).strip() if i_caption == len(columns) - 1 else row[i_caption].strip()
            if not image:
                raise CaptionerError(f"{path}:{line}: empty image name")
            if not caption:
                empty += 1
                captions.setdefault(image, [])
                continue
            captions.setdefault(image, []).append(caption)
    except csv.Error as exc:
        raise CaptionerError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
    if not captions:
        raise CaptionerError(f"{path}: no caption rows after the header")
    return captions, empty


def read_token_file(path: Path) -> tuple[dict[str, list[str]], int]:
    """Read the original `name.jpg#k<TAB>caption` file into {image: [captions]} and the empty-caption count."""
    captions: dict[str, list[str]] = {}
    empty = 0
    for line_no, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name, hash_sign, _ = key.partition("#")
        if not sep or not hash_sign or not name:
            raise CaptionerError(f"{path}:{line_no}: expected 'name.jpg#k<TAB>caption', got {line[:60]!r}")
        caption = caption.strip()
        if not caption:
            empty += 1
            captions.setdefault(name, [])
            continue
        captions.setdefault(name, []).append(caption)
    if not captions:
        raise CaptionerError(f"{path}: no caption lines")
    return captions, empty


def _few(names: list[str], k: int = 3) -> str:
    """A short listing of names for a one-line warning (control characters escaped)."""
    return printable(", ".join(names[:k]) + (", ..." if len(names) > k else ""))


def links_leaving(image_files: dict[str, Path], root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """`image_files` without the symbolic links that lead out of `root` (as archives refuse them), and those links
    {name: target}; one `warning:` line each on stderr. Links that stay inside `root` are kept."""
    base = root.resolve()
    kept: dict[str, Path] = {}
    refused: dict[str, str] = {}
    for name, path in image_files.items():
        target = path.resolve()  # a file that is no link (at any level below `root`) resolves to itself, inside
        if base in target.parents:
            kept[name] = path
            continue
        refused[name] = str(target)
        print(f"warning: {printable(f'{path}: symbolic link to {target} leaves {root}')}; skipped (copy the file "
              "in instead)", file=sys.stderr)
    return kept, refused


def _undecodable(path: Path) -> str | None:
    """The reason a file is not a usable image, or None when its header and structure check out.

    An image over Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`; Pillow warns above it and refuses
    above twice it) is refused here as extraction and `captioner predict` refuse it, from its header alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and width * height > limit:
                    return (f"too many pixels (decompression bomb guard): {width}x{height} = {width * height} "
                            f"pixels, limit {limit}")
                img.verify()
    except Image.DecompressionBombError as exc:
        return f"too many pixels (decompression bomb guard): {exc}".splitlines()[0]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _drop_duplicates(captions: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each image's captions with exact repeats dropped (first kept, order kept), and the repeats per image."""
    unique = {name: list(dict.fromkeys(caps)) for name, caps in captions.items()}
    dropped = {name: len(captions[name]) - len(caps) for name, caps in unique.items() if len(caps) < len(captions[name])}
    return unique, dropped


def finalize(
    captions: dict[str, list[str]],
    splits: dict[str, list[str]],
    image_files: dict[str, Path],
    report: dict[str, Any],
) -> RawDataset:
    """Keep the images that are in a split, have captions and a readable file; record every drop in the report.

    A caption repeated word for word for the same image (a duplicated line) is kept once and counted.
    """
    captions, duplicates = _drop_duplicates(captions)
    missing = sorted({n for names in splits.values() for n in names if n not in image_files} |
                     {n for n in captions if n not in image_files})
    no_captions = sorted(n for names in splits.values() for n in names if n in image_files and not captions.get(n))
    undecodable = {}
    for name in tqdm(sorted({n for names in splits.values() for n in names if n in image_files}),
                     desc="checking images", unit="img", leave=False, disable=None):
        reason = _undecodable(image_files[name])
        if reason:
            undecodable[name] = reason
    in_split = {n for names in splits.values() for n in names}
    usable = {n for n in in_split if n in image_files and captions.get(n) and n not in undecodable}
    kept_splits = {s: [n for n in splits.get(s, []) if n in usable] for s in SPLITS}
    report.update({
        "images": len(usable),
        "captions": sum(len(captions[n]) for n in usable),
        "splits": {s: len(kept_splits[s]) for s in SPLITS},
        "missing_images": missing,
        "images_without_captions": no_captions,
        "undecodable_images": undecodable,
        "not_in_any_split": sorted(n for n in captions if n in image_files and n not in in_split),
        "fewer_than_five_captions": sorted(n for n in usable if len(captions[n]) < CAPTIONS_PER_IMAGE),
        "duplicate_captions_dropped": sum(duplicates.values()),
        "images_with_duplicate_captions": sorted(duplicates),
    })
    if duplicates:
        print(f"warning: {sum(duplicates.values())} duplicate caption lines dropped ({_few(sorted(duplicates))}); "
              "see data/raw/report.json", file=sys.stderr)
    if missing:
        print(f"warning: {len(missing)} images named in the split lists or captions are not in the images "
              f"folder and were dropped ({_few(missing)}); all listed in data/raw/report.json", file=sys.stderr)
    if undecodable:
        print(f"warning: {len(undecodable)} image files are not readable images and were dropped "
              f"({_few(sorted(undecodable))}); see data/raw/report.json", file=sys.stderr)
    for split, names in kept_splits.items():
        if not names:
            print(f"warning: split '{split}' has no usable images (evaluate on another split, e.g. evaluate.split: val)",
                  file=sys.stderr)
    return RawDataset(
        captions={n: captions[n] for n in sorted(usable)},
        splits=kept_splits,
        image_files={n: image_files[n] for n in usable},
        report=report,
    )


def write_raw(dataset: RawDataset, out_dir: Path) -> None:
    """Write `data/raw/` atomically: images copied, captions.csv, splits.json, report.json."""
    with atomic_dir(out_dir) as tmp:
        images = tmp / "Images"
        images.mkdir()
        for name in tqdm(sorted(dataset.image_files), desc="copying images", unit="img", disable=None):
            shutil.copyfile(dataset.image_files[name], images / name)
        with (tmp / "captions.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for name, caps in dataset.captions.items():
                writer.writerows([name, c] for c in caps)
        write_json(tmp / "splits.json", dataset.splits)
        write_json(tmp / "report.json", dataset.report)
