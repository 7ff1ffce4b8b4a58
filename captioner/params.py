"""Read params.yaml and refuse unknown keys, so a typo never silently falls back to a default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from captioner.errors import CaptionerError

# Every key the pipeline understands, with its default. A section's keys are the only ones allowed in it.
DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "data": {
        "source": "sample",
        "path": None,
        "kaggle_dataset": "adityajn105/flickr8k",
        "sample_images": 400,
        "sample_seed": 0,
        "split": "official",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "split_seed": 0,
    },
    "features": {
        "encoder": "efficientnet_lite0",
        "weights": "imagenet",
        "output": "grid",
        "batch_size": 32,
    },
    "text": {"min_words": 1},
    "tokenize": {"min_count": 5, "max_length_percentile": 99},
    "train": {
        "decoder": "attention",
        "embedding_dim": 256,
        "units": 512,
        "dropout": 0.5,
        "batch_size": 64,
        "epochs": 30,
        "learning_rate": 0.001,
        "patience": 3,
        "scst_epochs": 3,
        "scst_learning_rate": 0.0001,
        "scst_samples": 5,
        "scst_batch_images": 32,
        "scst_minutes": 9.0,
        "max_minutes": 24.0,
    },
    "evaluate": {"split": "test", "beam_size": 3, "figure_images": 8},
}


def _check_type(key: str, value: Any, default: Any) -> None:
    """Refuse a value whose type cannot stand in for the default's (ints may stand for floats)."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise CaptionerError(
            f"params.yaml: '{key}' must be {type(default).__name__}, got {value!r}"
        )


def load_params(path: str | os.PathLike[str] = "params.yaml") -> dict[str, Any]:
    """Return params.yaml merged over DEFAULTS; raise CaptionerError on an unknown key or a wrong type."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: params file not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CaptionerError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise CaptionerError(f"{path}: expected a mapping of sections at the top level")
    params: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        params[key] = dict(default) if isinstance(default, dict) else default
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise CaptionerError(f"{path}: unknown key '{key}' (known: {', '.join(DEFAULTS)})")
        default = DEFAULTS[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise CaptionerError(f"{path}: '{key}' must be a section of key: value lines")
            for sub, sub_value in value.items():
                if sub not in default:
                    raise CaptionerError(
                        f"{path}: unknown key '{key}.{sub}' (known: {', '.join(default)})"
                    )
                _check_type(f"{key}.{sub}", sub_value, default[sub])
                params[key][sub] = sub_value
        else:
            _check_type(key, value, default)
            params[key] = value
    return params
