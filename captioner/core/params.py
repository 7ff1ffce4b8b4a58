"""Read params.yaml and check every setting against one table before any work starts.

A typo never silently falls back to a default, and a value out of range stops the stage with one line
naming the file, line and key. To add a setting, add one line to SETTINGS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from captioner.core.errors import CaptionerError
from captioner.core.schema import Field, check, choice, integer, number, paths, text

# Every setting the pipeline understands: "section.key" (or a top-level "key") -> kind, default, range.
SETTINGS: dict[str, Field] = {
    "seed": integer(42, 0, 2**32 - 1),
    "data.source": choice("sample", "sample", "folder", "archive", "kaggle", "karpathy"),
    "data.path": paths(None),
    "data.kaggle_dataset": text("adityajn105/flickr8k"),
    "data.sample_images": integer(400, 10, 1_000_000),
    "data.sample_seed": integer(0, 0, 2**32 - 1),
    "data.split": choice("official", "official", "random"),
    "data.val_fraction": number(0.1, 0, below=1),
    "data.test_fraction": number(0.1, 0, below=1),
    "data.split_seed": integer(0, 0, 2**32 - 1),
    "features.encoder": text("efficientnet_lite0"),
    "features.weights": text("imagenet"),
    "features.output": choice("grid", "grid", "pooled"),
    "features.batch_size": integer(32, 1, 4096),
    "features.precision": choice("float32", "auto", "float32", "bfloat16"),
    "text.min_words": integer(1, 1, 100),
    "tokenize.min_count": integer(5, 1),
    "tokenize.max_length_percentile": number(99, 1, 100),
    "train.decoder": choice("attention", "attention", "inject", "merge"),
    "train.embedding_dim": integer(256, 1, 65536),
    "train.units": integer(512, 1, 65536),
    "train.output_units": integer(512, 1, 65536),
    "train.dropout": number(0.5, 0, below=1),
    "train.attention_heads": integer(8, 1, 512),
    "train.batch_size": integer(160, 1, 65536),
    "train.captions_per_image": integer(5, 1, 100),
    "train.precision": choice("auto", "auto", "float32", "bfloat16"),
    "train.devices": Field("int", "auto", low=1, high=1024, choices=("auto",)),
    "train.epochs": integer(30, 0, 100_000),
    "train.learning_rate": number(0.001, 1e-12, 10),
    "train.patience": integer(2, 0, 100_000),
    "train.max_minutes": number(40.0, 0.0001, 1e6),
    "scst.epochs": integer(10, 0, 100_000),
    "scst.learning_rate": number(0.0001, 1e-12, 10),
    "scst.samples": integer(5, 2, 1024),
    "scst.batch_images": integer(32, 1, 65536),
    "scst.precision": choice("auto", "auto", "float32", "bfloat16"),
    "scst.litert": Field("bool", True),
    "scst.max_minutes": number(30.0, 0.0001, 1e6),
    "evaluate.split": choice("test", "test", "val", "train"),
    "evaluate.beam_size": integer(3, 1, 100),
    "evaluate.figure_images": integer(8, 1, 64),
}


# Keys of earlier versions -> their name now; using one is an error that names the new key.
RENAMED: dict[str, str] = {
    "train.scst_epochs": "scst.epochs",
    "train.scst_learning_rate": "scst.learning_rate",
    "train.scst_samples": "scst.samples",
    "train.scst_batch_images": "scst.batch_images",
    "train.litert": "scst.litert",
}

# Settings that are valid alone but not together: (key to point at, broken when, what to do).
RULES: list[tuple[str, Callable[[dict[str, Any]], bool], str]] = [
    ("train.decoder", lambda p: p["train.decoder"] == "attention" and p["features.output"] == "pooled",
     "the attention decoder needs features.output: grid (or use train.decoder: inject or merge)"),
    ("train.captions_per_image", lambda p: p["train.captions_per_image"] > p["train.batch_size"],
     "train.captions_per_image must not exceed train.batch_size (a batch holds whole images)"),
    ("data.path", lambda p: p["data.source"] in ("folder", "archive", "karpathy") and p["data.path"] is None,
     "data.source folder, archive and karpathy need data.path (a folder, or one or more archive or split files)"),
]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": v} -> {"a": {"b": v}}; top-level keys stay as they are."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, sub = key.rpartition(".")
        if section:
            nested.setdefault(section, {})[sub] = value
        else:
            nested[key] = value
    return nested


DEFAULTS: dict[str, Any] = _nest({key: field.default for key, field in SETTINGS.items()})


def _key_lines(text_: str) -> dict[str, int]:
    """1-based line of every key in the YAML text ("section" and "section.key")."""
    lines: dict[str, int] = {}
    root = yaml.compose(text_)
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_node, _ in value_node.value:
                lines[f"{key_node.value}.{sub_node.value}"] = sub_node.start_mark.line + 1
    return lines


def _flatten(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> dict[str, Any]:
    """Params file mapping -> {"section.key": value}; unknown keys and non-mapping sections are errors."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}:{lines.get(str(key), 1)}"
        if key not in DEFAULTS:
            raise CaptionerError(f"{where}: unknown key '{key}' (known: {', '.join(DEFAULTS)})")
        if not isinstance(DEFAULTS[key], dict):
            flat[key] = value
            continue
        if not isinstance(value, dict):
            raise CaptionerError(f"{where}: '{key}' must be a section of key: value lines")
        for sub, sub_value in value.items():
            if f"{key}.{sub}" in RENAMED:
                raise CaptionerError(f"{path}:{lines.get(f'{key}.{sub}', 1)}: '{key}.{sub}' is now "
                                     f"'{RENAMED[f'{key}.{sub}']}' (the self-critical stage has its own section)")
            if sub not in DEFAULTS[key]:
                raise CaptionerError(f"{path}:{lines.get(f'{key}.{sub}', 1)}: unknown key '{key}.{sub}' "
                                     f"(known: {', '.join(DEFAULTS[key])})")
            flat[f"{key}.{sub}"] = sub_value
    return flat


def load_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the params file merged over DEFAULTS; raise CaptionerError on an unknown key or a bad value."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: params file not found (run from the project root)")
    try:
        source = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(source) or {}
        lines = _key_lines(source)
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise CaptionerError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise CaptionerError(f"{path}: expected a mapping of sections at the top level")
    flat = {key: field.default for key, field in SETTINGS.items()}
    for key, value in _flatten(path, raw, lines).items():
        flat[key] = check(f"{path}:{lines.get(key, 1)}", key, value, SETTINGS[key])
    for key, broken, advice in RULES:
        if broken(flat):
            where = f"{path}:{lines[key]}" if key in lines else str(path)
            raise CaptionerError(f"{where}: '{key}': {advice}")
    return _nest(flat)


def useless_settings(params: dict[str, Any], section: str) -> list[str]:
    """Warnings for settings of `section` that pass the checks but cannot give a useful result."""
    warnings = []
    if section == "train" and params["train"]["epochs"] == 0:
        warnings.append("train.epochs is 0: the model keeps its random initial weights")
    return warnings


def warn_useless(params: dict[str, Any], section: str) -> None:
    """Print one `warning:` line on stderr for each setting of `section` that cannot give a useful result."""
    for line in useless_settings(params, section):
        print(f"warning: {line}", file=sys.stderr)
