"""Dataset sources (embedded sample, Flickr8k folder / archive / Kaggle), each turned into `data/raw/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.atomic import scratch_dir
from captioner.datasets.archive import extract_archive, extract_nested
from captioner.datasets.flickr8k import load_folder
from captioner.datasets.kaggle import download_kaggle
from captioner.datasets.raw import RawDataset, write_raw
from captioner.datasets.sample import generate_sample
from captioner.errors import CaptionerError

SOURCES = ("sample", "folder", "archive", "kaggle")


def _paths(value: Any) -> list[Path]:
    """`data.path` as a list of paths (archive accepts several, e.g. the two original Flickr8k zips)."""
    if value is None or value == "" or value == []:
        raise CaptionerError("data.path: required for this data.source (a folder or an archive file)")
    return [Path(v) for v in (value if isinstance(value, list) else [value])]


def prepare_raw(data: dict[str, Any], out_dir: Path) -> RawDataset:
    """Build the raw dataset that `data` (params.yaml's data section) names, and write it to `out_dir`."""
    source = data["source"]
    if source not in SOURCES:
        raise CaptionerError(f"params.yaml: data.source '{source}' is unknown (choose one of {', '.join(SOURCES)})")
    with scratch_dir(out_dir) as scratch:
        if source == "sample":
            dataset = generate_sample(scratch, n_images=data["sample_images"], seed=data["sample_seed"])
        elif source == "folder":
            paths = _paths(data["path"])
            if len(paths) != 1:
                raise CaptionerError("data.path: data.source folder takes one folder")
            dataset = load_folder(paths[0])
        elif source == "archive":
            for archive in _paths(data["path"]):
                extract_archive(archive, scratch)
            extract_nested(scratch)
            dataset = load_folder(scratch)
            dataset.report["source_path"] = [str(p) for p in _paths(data["path"])]
        else:
            dataset = load_folder(download_kaggle(data["kaggle_dataset"]))
        dataset.report["source"] = source
        write_raw(dataset, out_dir)
    return dataset
