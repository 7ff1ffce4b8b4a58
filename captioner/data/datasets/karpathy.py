"""Karpathy's split files (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`) plus their images.

The file lists `images[]`, each with `filename`, an optional `filepath` (COCO: `val2014`), `split`
(train, restval, val or test; restval joins train) and `sentences[].raw`. `data.path` is the folder
holding the file and the images (at `filepath/filename`, at `filename`, or either one folder down), or
a list `[split_file, image_root]`. Images get flat, unique names in `data/raw/Images`: the file name,
or the whole relative path joined with `__` where two files share a name; renamed ones are listed in
the report.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from captioner.data.datasets.raw import RawDataset, finalize, links_leaving
from captioner.data.datasets.splitting import choose_splits
from captioner.core.errors import CaptionerError

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class Entry:
    """One image of the split file: its path relative to the image root, its split and captions."""

    rel: PurePosixPath
    split: str
    captions: list[str]
    empty: int


def locate(paths: list[Path]) -> tuple[Path, Path]:
    """(split file, image root) from `data.path`: a folder holding one dataset_*.json, the file, or both."""
    if len(paths) == 2:
        split_file, root = paths
        if not split_file.is_file():
            raise CaptionerError(f"data.path: split file not found: {split_file}")
        if not root.is_dir():
            raise CaptionerError(f"data.path: image folder not found: {root}")
        return split_file, root
    if len(paths) != 1:
        raise CaptionerError("data.path: data.source karpathy takes a folder, or a list [split_file, image_root]")
    path = paths[0]
    if path.is_file():
        return path, path.parent
    if not path.is_dir():
        raise CaptionerError(f"data.path: folder not found: {path}")
    found = sorted(path.glob("dataset_*.json"))
    if not found:
        raise CaptionerError(f"{path}: no Karpathy split file (dataset_*.json) in this folder; "
                             f"set data.path: [split_file, image_root]")
    if len(found) > 1:
        raise CaptionerError(f"{path}: several split files ({', '.join(p.name for p in found)}); "
                             f"set data.path: [split_file, image_root]")
    return found[0], path


def _text(split_file: Path, where: str, value: Any) -> str:
    """`value` as a string, or a one-line error naming the file and the JSON key."""
    if not isinstance(value, str):
        raise CaptionerError(f"{split_file}: {where} must be a string, got {value!r}")
    return value


def _entry(split_file: Path, i: int, item: Any) -> Entry:
    """Check and read `images[i]`."""
    if not isinstance(item, dict):
        raise CaptionerError(f"{split_file}: images[{i}] must be an object")
    for key in ("filename", "split", "sentences"):
        if key not in item:
            raise CaptionerError(f"{split_file}: images[{i}] has no '{key}'")
    filename = _text(split_file, f"images[{i}].filename", item["filename"]).strip()
    filepath = _text(split_file, f"images[{i}].filepath", item.get("filepath") or "").strip()
    rel = PurePosixPath(filepath.replace("\\", "/")) / filename.replace("\\", "/")
    if not filename or rel.is_absolute() or ".." in rel.parts:
        raise CaptionerError(f"{split_file}: images[{i}]: bad image path {str(rel)!r} (must stay under the image root)")
    split = _text(split_file, f"images[{i}].split", item["split"])
    if split not in SPLIT_OF:
        raise CaptionerError(f"{split_file}: images[{i}].split '{split}' is not one of {', '.join(SPLIT_OF)}")
    if not isinstance(item["sentences"], list):
        raise CaptionerError(f"{split_file}: images[{i}].sentences must be a list")
    captions, empty = [], 0
    for k, sentence in enumerate(item["sentences"]):
        if not isinstance(sentence, dict) or "raw" not in sentence:
            raise CaptionerError(f"{split_file}: images[{i}].sentences[{k}] has no 'raw'")
        text = " ".join(_text(split_file, f"images[{i}].sentences[{k}].raw", sentence["raw"]).split())
        if text:
            captions.append(text)
        else:
            empty += 1
    return Entry(rel, split, captions, empty)


def read_split_file(split_file: Path) -> list[Entry]:
    """Every image entry of a Karpathy split file; malformed JSON or entries are one-line errors."""
    try:
        content = json.loads(split_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"{split_file}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise CaptionerError(f"{split_file}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise CaptionerError(f"{split_file}: expected a Karpathy split file, an object with an 'images' list")
    entries = [_entry(split_file, i, item) for i, item in enumerate(content["images"])]
    if not entries:
        raise CaptionerError(f"{split_file}: the 'images' list is empty")
    seen: dict[PurePosixPath, int] = {}
    for i, entry in enumerate(entries):
        if entry.rel in seen:
            raise CaptionerError(f"{split_file}: images[{i}] repeats images[{seen[entry.rel]}] ({entry.rel})")
        seen[entry.rel] = i
    return entries


def flat_names(rels: list[PurePosixPath]) -> list[str]:
    """A unique flat file name per relative path: the file name, or the path joined with `__` where names clash."""
    counts = Counter(rel.name for rel in rels)
    taken: set[str] = set()
    names = []
    for rel in rels:
        name = rel.name if counts[rel.name] == 1 else "__".join(rel.parts)
        stem, suffix, k = PurePosixPath(name).stem, PurePosixPath(name).suffix, 2
        while name in taken:
            name, k = f"{stem}-{k}{suffix}", k + 1
        taken.add(name)
        names.append(name)
    return names


def find_files(entries: list[Entry], root: Path) -> tuple[dict[int, Path], Path]:
    """{entry index: image file} and the folder they were found under: `root`, else the first subfolder with any."""
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for base in [root, *subfolders]:
        found = {}
        for i, entry in enumerate(entries):
            for candidate in (base / entry.rel, base / entry.rel.name):
                if candidate.is_file():
                    found[i] = candidate
                    break
        if found:
            return found, base
    return {}, root


def load_karpathy(paths: list[Path], data: dict[str, Any]) -> RawDataset:
    """Read a Karpathy split file and its images; split by the file (`data.split: official`) or at random."""
    split_file, root = locate(paths)
    entries = read_split_file(split_file)
    files, image_root = find_files(entries, root)
    if not files:
        raise CaptionerError(
            f"{split_file}: none of its {len(entries)} images was found under {root} (looked for filepath/filename "
            f"and filename, also one folder down; e.g. {root / entries[0].rel}); set data.path to the folder that "
            f"holds them, or to [split_file, image_root]"
        )
    names = flat_names([e.rel for e in entries])
    captions = {name: entry.captions for name, entry in zip(names, entries)}
    image_files, outside = links_leaving({names[i]: path for i, path in files.items()}, image_root)
    official: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, entry in zip(names, entries):
        official[SPLIT_OF[entry.split]].append(name)
    captioned = sorted(n for n in image_files if captions[n])
    if not captioned:
        raise CaptionerError(f"{split_file}: none of the {len(image_files)} images found has a non-empty caption")
    splits = choose_splits(data, captioned, official, f"split of {split_file.name}", str(split_file))
    report = {
        "source_path": [str(p) for p in paths],
        "layout": "karpathy",
        "split_file": str(split_file),
        "image_root": str(image_root),
        "split": data["split"],
        "restval_in_train": sum(e.split == "restval" for e in entries),
        "renamed": {name: str(e.rel) for name, e in zip(names, entries) if name != e.rel.name},
        "empty_captions_dropped": sum(e.empty for e in entries),
        "links_leaving_images": outside,
    }
    return finalize(captions, splits, image_files, report)
