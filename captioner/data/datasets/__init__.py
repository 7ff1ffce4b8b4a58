"""Dataset sources (embedded sample, Flickr8k-layout folder / archive / Kaggle, Karpathy split files),
each turned into `data/raw/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.core.atomic import scratch_dir
from captioner.data.datasets.archive import extract_archive, extract_nested
from captioner.data.datasets.flickr8k import load_folder
from captioner.data.datasets.kaggle import download_kaggle
from captioner.data.datasets.karpathy import load_karpathy
from captioner.data.datasets.raw import RawDataset, write_raw
from captioner.data.datasets.sample import generate_sample
from captioner.data.datasets.splitting import check_split_params
from captioner.core.errors import CaptionerError
from captioner.core.params import where

SOURCES = ("sample", "folder", "archive", "kaggle", "karpathy")


def _paths(value: Any) -> list[Path]:
    """`data.path` as a list of paths (archive accepts several, e.g. the two original Flickr8k zips)."""
    if value is None or value == "" or value == []:
        raise CaptionerError("data.path: required for this data.source (a folder or an archive file)")
    return [Path(v).expanduser() for v in (value if isinstance(value, list) else [value])]


def _why_empty(report: dict[str, Any]) -> str:
    """Why no image survived `finalize`, for the one-line error."""
    undecodable = report.get("undecodable_images") or {}
    if undecodable:
        name, reason = next(iter(undecodable.items()))
        return f"none of the matched images is a readable image ({len(undecodable)} unreadable, e.g. {name}: {reason})"
    return "no image has a file, captions and a split at once"


def _build(source: str, data: dict[str, Any], scratch: Path) -> RawDataset:
    """The raw dataset of `source`, unpacked or drawn into `scratch` where it needs files of its own."""
    if source == "sample":
        dataset = generate_sample(scratch, n_images=data["sample_images"], seed=data["sample_seed"])
    elif source == "folder":
        paths = _paths(data["path"])
        if len(paths) != 1:
            raise CaptionerError("data.path: data.source folder takes one folder")
        dataset = load_folder(paths[0], data)
    elif source == "archive":
        for archive in _paths(data["path"]):
            extract_archive(archive, scratch)
        extract_nested(scratch)
        shown = ", ".join(str(p) for p in _paths(data["path"]))
        dataset = load_folder(scratch, data, shown_as=shown)
        dataset.report["source_path"] = [str(p) for p in _paths(data["path"])]
    elif source == "karpathy":
        dataset = load_karpathy(_paths(data["path"]), data)
    else:
        dataset = load_folder(download_kaggle(data["kaggle_dataset"]), data)
    return dataset


def prepare_raw(data: dict[str, Any], out_dir: Path) -> RawDataset:
    """Build the raw dataset that `data` (params.yaml's data section) names, and write it to `out_dir`."""
    source = data["source"]
    if source not in SOURCES:
        raise CaptionerError(f"{where('data.source')}: data.source '{source}' is unknown "
                             f"(choose one of {', '.join(SOURCES)})")
    check_split_params(data)
    with scratch_dir(out_dir) as scratch:
        dataset = _build(source, data, scratch)  # a full disk while unpacking is one line (scratch_dir)
        if not dataset.image_files:
            raise CaptionerError(f"data.source {source}: no usable images: {_why_empty(dataset.report)}")
        dataset.report["source"] = source
        write_raw(dataset, out_dir)
    return dataset
