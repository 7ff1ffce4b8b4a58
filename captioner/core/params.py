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
from captioner.core.schema import Field, check, choice, integer, integers, number, paths, quote, text

MAX_MEMBERS = 16  # seeds in `members`: bundle.MAX_MEMBERS, the decoders a bundle holds at most (a test checks)
SEED = integer(42, 0, 2**32 - 1)  # one member's training seed
TAIL_OUTPUTS = ("stage6", "stage5")  # vision.encoders.TAIL_OUTPUTS (core does not import vision; a test checks)

# Every setting the pipeline understands: "section.key" (or a top-level "key") -> kind, default, range.
SETTINGS: dict[str, Field] = {
    "members": integers([42], SEED.low, SEED.high, MAX_MEMBERS),
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
    "features.output": choice("grid", "grid", "pooled", *TAIL_OUTPUTS),
    "features.batch_size": integer(32, 1, 4096),
    "features.precision": choice("float32", "auto", "float32", "bfloat16"),
    "features.flip": Field("bool", False),
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
    "train.tail_learning_rate": number(0.0001, 0, 10),
    "train.tail_from_epoch": integer(3, 1, 100_000),
    "scst.epochs": integer(10, 0, 100_000),
    "scst.learning_rate": number(0.0001, 1e-12, 10),
    "scst.samples": integer(5, 2, 1024),
    "scst.batch_images": integer(32, 1, 65536),
    "scst.precision": choice("auto", "auto", "float32", "bfloat16"),
    "scst.litert": Field("bool", True),
    "scst.max_minutes": number(30.0, 0.0001, 1e6),
    "assemble.length_alpha": number(1.0, 0, 10),
    "assemble.flip": Field("bool", False),
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
    ("train.decoder", lambda p: p["train.decoder"] != "attention" and p["features.output"] in TAIL_OUTPUTS,
     "features.output stage6 or stage5 (the fine-tuned encoder tail) needs train.decoder: attention"),
    ("assemble.flip", lambda p: p["assemble.flip"] and not p["features.flip"],
     "assemble.flip needs features.flip: true (the evaluate stage reads the mirrored images' stored features); "
     "set assemble.flip: false with it"),
    ("train.captions_per_image", lambda p: p["train.captions_per_image"] > p["train.batch_size"],
     "train.captions_per_image must not exceed train.batch_size (a batch holds whole images)"),
    ("data.path", lambda p: p["data.source"] in ("folder", "archive", "karpathy") and p["data.path"] is None,
     "data.source folder, archive and karpathy need data.path (a folder, or one or more archive or split files)"),
    ("data.test_fraction", lambda p: p["data.val_fraction"] + p["data.test_fraction"] >= 1,
     "data.val_fraction + data.test_fraction must be below 1 (train gets the rest)"),
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


MAX_PARAMS_BYTES = 1 << 20  # a params file is a few kilobytes; refuse anything near a megabyte unread
MAX_ALIASES = 100  # YAML `*alias` uses a params file may hold
MAX_NODES = 10_000  # values in the parsed file, every alias counted as the copy it stands for
MERGE_TAG = "tag:yaml.org,2002:merge"

# The params file the last `load_params` read and the line of each of its keys, so checks that run later (a random
# split that leaves train empty, a device count the machine lacks) can name the file and line that set the value.
_LOADED: dict[str, Any] = {"path": "params.yaml", "lines": {}}


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses more than MAX_ALIASES alias uses while composing (an alias bomb)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Count alias events before PyYAML resolves them to the anchored node."""
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise CaptionerError(f"{self.name}:{line}: more than {MAX_ALIASES} YAML aliases (*name); "
                                     "a params file needs none")
        return super().compose_node(parent, index)


def _expanded_size(node: yaml.Node, path: str, sizes: dict[int, int], open_: set[int]) -> int:
    """Values under `node` with every alias expanded (memoised per node, so a bomb is sized, never expanded)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise CaptionerError(f"{path}:{node.start_mark.line + 1}: a YAML alias refers to a value that holds it")
    open_.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    size = 1
    for child in children:
        size += _expanded_size(child, path, sizes, open_)
        if size > MAX_NODES:
            raise CaptionerError(f"{path}:{node.start_mark.line + 1}: more than {MAX_NODES} values once YAML "
                                 "aliases are expanded; a params file holds a few dozen")
    open_.discard(id(node))
    sizes[id(node)] = size
    return size


def _refuse_duplicates(node: yaml.Node, path: str, seen: set[int]) -> None:
    """A key given twice in one mapping is an error naming the key and both lines (YAML lets the last one win)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                line = key_node.start_mark.line + 1
                earlier = first.setdefault((key_node.tag, key_node.value), line)
                if earlier != line:
                    raise CaptionerError(f"{path}:{line}: duplicate key {quote(key_node.value)} "
                                         f"(first at line {earlier}); keep one")
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        for child in (node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]):
            _refuse_duplicates(child, path, seen)


def _key_lines(root: yaml.Node | None) -> dict[str, int]:
    """1-based line of every key in the composed YAML ("section" and "section.key")."""
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_node, _ in value_node.value:
                lines[f"{key_node.value}.{sub_node.value}"] = sub_node.start_mark.line + 1
    return lines


def read_settings_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """A settings YAML file's value and the line of each key; one CaptionerError line for an unreadable, oversized,
    duplicate-key or alias-bomb file, before any value is expanded."""
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise CaptionerError(f"{path}: {path.stat().st_size} bytes; a params file holds at most {MAX_PARAMS_BYTES}")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    loader = _BoundedLoader(source)
    loader.name = str(path)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _expanded_size(root, str(path), {}, set())
        _refuse_duplicates(root, str(path), set())
        return loader.construct_document(root), _key_lines(root)
    except yaml.YAMLError as exc:
        raise CaptionerError(f"{path}: not valid YAML: {str(exc).splitlines()[0][:200]}") from exc
    except (TypeError, ValueError) as exc:  # an unhashable key (a list as a key), an integer of 5000 digits
        raise CaptionerError(f"{path}: not a params file: {str(exc).splitlines()[0][:200]}") from exc
    except RecursionError as exc:
        raise CaptionerError(f"{path}: values nested too deeply; a params file has sections of key: value lines") from exc
    finally:
        loader.dispose()


def _flatten(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> dict[str, Any]:
    """Params file mapping -> {"section.key": value}; unknown keys and non-mapping sections are errors."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}:{lines.get(str(key), 1)}"
        if key == "seed":
            raise CaptionerError(f"{where}: 'seed' is now 'members', the list of the members' seeds (seed: 7 is "
                                 "members: [7]; several make an ensemble)")
        if key not in DEFAULTS:
            raise CaptionerError(f"{where}: unknown key {quote(key)} (known: {', '.join(DEFAULTS)})")
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
                raise CaptionerError(f"{path}:{lines.get(f'{key}.{sub}', 1)}: unknown key "
                                     f"{quote(f'{key}.{sub}')} (known: {', '.join(DEFAULTS[key])})")
            flat[f"{key}.{sub}"] = sub_value
    return flat


def load_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the params file merged over DEFAULTS; raise CaptionerError on an unknown key or a bad value."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: params file not found (run from the project root)")
    raw, lines = read_settings_yaml(path)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise CaptionerError(f"{path}: expected a mapping of sections at the top level")
    flat = {key: field.default for key, field in SETTINGS.items()}
    for key, value in _flatten(path, raw, lines).items():
        flat[key] = check(f"{path}:{lines.get(key, 1)}", key, value, SETTINGS[key])
    for key, broken, advice in RULES:
        if broken(flat):
            where = f"{path}:{lines[key]}" if key in lines else str(path)
            raise CaptionerError(f"{where}: '{key}': {advice}")
    _LOADED.update(path=str(path), lines=lines)
    return _nest(flat)


def member_params(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """`params` for training the ensemble member of `seed` (a member stage's `--seed`): its `seed` key set."""
    return {**params, "seed": check("--seed", "seed", seed, SEED)}


def where(key: str) -> str:
    """"file:line" of `key` in the params file the last `load_params` read ("file" alone when the key is not in it),
    for errors found after loading; "params.yaml" before any file was read."""
    line = _LOADED["lines"].get(key)
    return f"{_LOADED['path']}:{line}" if line else _LOADED["path"]


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
