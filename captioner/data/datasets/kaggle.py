"""Flickr8k from Kaggle through kagglehub (needs network and, for most accounts, credentials)."""

from __future__ import annotations

from pathlib import Path

from captioner.core.errors import CaptionerError

HOW_TO_FIX = (
    "provide Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json) on a machine "
    "with network, or download the dataset yourself and set data.source: archive (or folder) with data.path"
)


def download_kaggle(dataset: str) -> Path:
    """Download (or reuse kagglehub's cached copy of) `dataset` and return its local folder."""
    try:
        import kagglehub
    except ImportError as exc:
        raise CaptionerError(f"data.source: kaggle needs the kagglehub package; {HOW_TO_FIX}") from exc
    try:
        path = kagglehub.dataset_download(dataset)
    except Exception as exc:  # kagglehub raises many network/auth types; all mean the same to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CaptionerError(f"kaggle download of '{dataset}' failed ({reason}); {HOW_TO_FIX}") from exc
    return Path(path)
