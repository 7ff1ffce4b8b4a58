"""The model bundle `models/captioner/`: decoder.keras + vocab.json + config.json, all `predict` needs,
and optionally captioner.tflite, the same encoder and decoder for the LiteRT runtime (see `litert.py`).

Saving writes the decoder without its optimizer state and with fixed zip timestamps and save date, so two
identical trainings give byte-identical bundles. Loading checks every value of config.json and vocab.json
(kinds, ranges, agreement with each other and with the model) before the model is loaded.

An ensemble bundle (format 2, written by `ensemble.assemble`) holds several decoders of one vocabulary and
encoder: config.json's `members` lists their files, decoder.keras first; every one is loaded and checked.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.core.atomic import atomic_dir, atomic_path, write_json
from captioner.core.errors import CaptionerError
from captioner.core.jsonfile import read_json
from captioner.core.schema import Field, check, choice, integer, number, quote, text
from captioner.data.text import MAX_LENGTH, RESERVED, Vocabulary, mirror_ids
from captioner.vision.encoders import ENCODERS, TAIL_OUTPUTS, find_spec, output_shape

MODEL_FILE = "decoder.keras"
WEIGHTS_ENTRY = "model.weights.h5"  # the weights inside a .keras zip
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
BUNDLE_FORMAT = 1
ENSEMBLE_FORMAT = 2  # config.json lists several decoder files in `members`
MAX_MEMBERS = 16
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
SAVE_DATE = "1980-01-01@00:00:00"  # decoder.keras's metadata.json date_saved, in Keras' format
# The registry's encoders fix input sizes and feature shapes: the ranges below come from them, and `_check_encoder`
# holds a bundle that names one of them (or a fusion of them) to its exact values (its LiteRT encoder was converted at
# that size). A name outside the registry (features made elsewhere) can still be evaluated on stored features; predict
# refuses it. A fused encoder's features are at most every registered encoder's concatenated.
MAX_INPUT_SIZE = max(spec.input_size for spec in ENCODERS.values())
MAX_FEATURE_DIM = sum(max(spec.pooled_dim, *spec.grid_shape) for spec in ENCODERS.values())

# Every value of config.json: "section.key" -> what it may be (a nullable value may also be absent).
CONFIG_FIELDS: dict[str, Field] = {
    "format": integer(None, BUNDLE_FORMAT, ENSEMBLE_FORMAT),
    "encoder.name": text(None),
    "encoder.weights": text(None),
    "encoder.weights_id": text(None, nullable=True),
    "encoder.input_size": integer(None, 1, MAX_INPUT_SIZE),
    "encoder.preprocessing": text(None, nullable=True),
    "encoder.output": choice("grid", "grid", "pooled", *TAIL_OUTPUTS),
    "feature_shape": Field("list"),
    "decoder.kind": choice("attention", "attention", "inject", "merge"),
    "decoder.embedding_dim": integer(None, 1, 65536),
    "decoder.units": integer(None, 1, 65536),
    "decoder.dropout": number(None, 0, below=1),
    "decoder.vocab_size": integer(None, len(RESERVED), 10_000_000),
    "decoder.tail": text(None, nullable=True),
    "decoding.beam_size": integer(None, 1, 100),
    "decoding.max_length": integer(None, len(RESERVED) - 1, MAX_LENGTH),
    "decoding.length_alpha": number(None, 0, 10),
    "decoding.flip": Field("bool", None, nullable=True),  # read each image as it is and mirrored (absent: false)
}
_FEATURE_DIM = integer(None, 1, MAX_FEATURE_DIM)


@dataclass
class Bundle:
    """A loaded, validated bundle: the training model, its vocabulary and config (an ensemble's: member 1's
    model, the others in `members`)."""

    model: Any
    vocab: Vocabulary
    config: dict[str, Any]
    members: list[Any] = field(default_factory=list)  # an ensemble's further training models (members 2..n)

    @property
    def decoders(self) -> list[Any]:
        """Every member's training model, member 1 first (one for a single-decoder bundle)."""
        return [self.model, *self.members]

    @property
    def member_count(self) -> int:
        """How many decoders the bundle averages (1: a single decoder)."""
        return len(member_files(self.config))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one encoder feature (as extracted, before any pooling)."""
        return tuple(self.config["feature_shape"])

    @property
    def flip(self) -> bool:
        """Whether the bundle reads each image as it is and mirrored left-right, probabilities averaged
        (`decoding.flip`): its features come as both views, (N, 2, *feature_shape)."""
        return bool(self.config["decoding"].get("flip"))

    @property
    def mirror(self) -> np.ndarray | None:
        """With `flip`, token id -> its id in the mirrored caption (what the decoding graphs take); else None."""
        return mirror_ids(self.vocab) if self.flip else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of what the decoder reads per image: the feature, or with `flip` both views' features stacked."""
        return (2, *self.feature_shape) if self.flip else self.feature_shape

    @property
    def decoder_kind(self) -> str:
        """merge | inject | attention."""
        return self.config["decoder"]["kind"]

    @property
    def decoder_spec(self):
        """The DecoderSpec config.json records (member 1's): what rebuilds the decoder, e.g. in another precision."""
        from captioner.model.decoders import DecoderSpec

        return DecoderSpec(feature_shape=self.feature_shape, **self.config["decoder"])


def make_config(
    encoder: dict[str, Any], feature_shape: tuple[int, ...], decoder: dict[str, Any], decoding: dict[str, Any]
) -> dict[str, Any]:
    """The config.json dict: encoder to rebuild (name, weights, input_size, output), feature shape, decoder, decoding."""
    return {
        "format": BUNDLE_FORMAT,
        "encoder": encoder,
        "feature_shape": [int(d) for d in feature_shape],
        "decoder": decoder,
        "decoding": decoding,
    }


def _renumber_shared_objects(node: Any, numbers: dict[Any, int]) -> Any:
    """Replace Keras' `shared_object_id`s (memory addresses) by 0, 1, 2... in order of first appearance."""
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _renumber_shared_objects(value, numbers) for key, value in node.items()}
    if "shared_object_id" in node:
        out["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers))
    return out


def _normalise_keras_zip(path: Path) -> None:
    """Rewrite a .keras zip with fixed entry dates, save date and object ids, so equal models give equal bytes."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info.filename)) for info in src.infolist()]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as dst:
        for info, data in members:
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "date_saved": SAVE_DATE}).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_DATE)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            dst.writestr(entry, data)


def save_decoder(model, path: Path) -> None:
    """Save `model`'s architecture and weights only (no optimizer state, no compile settings), reproducibly."""
    bare = model.__class__.from_config(model.get_config())
    bare.set_weights(model.get_weights())
    bare.save(path)
    _normalise_keras_zip(path)


def save_bundle(directory: str | os.PathLike[str], model, vocab: Vocabulary, config: dict[str, Any],
                encoder=None) -> None:
    """Write the bundle files into `directory`, replacing it atomically; with an encoder (Keras model: images ->
    features) also `captioner.tflite`, the LiteRT runtime's encoder and decoder."""
    with atomic_dir(directory) as tmp:
        save_decoder(model, tmp / MODEL_FILE)
        write_json(tmp / VOCAB_FILE, vocab.to_json())
        write_json(tmp / CONFIG_FILE, config)
        if encoder is not None:
            from captioner.model.litert import LITERT_FILE, litert_bytes

            (tmp / LITERT_FILE).write_bytes(litert_bytes(encoder, model))


def _read_object(path: Path) -> dict[str, Any]:
    """A bundle file that must hold one JSON object."""
    data = read_json(path, "bundle file", "train")
    if not isinstance(data, dict):
        raise CaptionerError(f"{path}: expected a JSON object")
    return data


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Check every value of config.json against CONFIG_FIELDS and the feature shape against the encoder output."""
    for key, field in CONFIG_FIELDS.items():
        section, _, name = key.rpartition(".")
        holder = config.get(section) if section else config
        if section and not isinstance(holder, dict):
            raise CaptionerError(f"{path}: '{section}' must be an object, got {holder!r}")
        if name not in holder:
            if field.nullable:  # optional: older bundles and hand-made configs may leave it out
                continue
            raise CaptionerError(f"{path}: lacks {key}")
        check(str(path), key, holder[name], field)
    shape = config["feature_shape"]
    for dim in shape:
        check(str(path), "feature_shape", dim, _FEATURE_DIM)
    dims = 1 if config["encoder"]["output"] == "pooled" else 3
    if len(shape) != dims:
        raise CaptionerError(f"{path}: 'feature_shape' {shape} does not fit encoder output "
                             f"{config['encoder']['output']!r} ({dims} dimensions)")
    tail = config["decoder"].get("tail")
    needed = config["encoder"]["name"] if config["encoder"]["output"] in TAIL_OUTPUTS else None
    if tail != needed:
        raise CaptionerError(f"{path}: 'decoder.tail' is {quote(tail)} but encoder output "
                             f"{config['encoder']['output']!r} needs {quote(needed)} (the decoder runs the encoder's "
                             f"last stages exactly when the features are {' or '.join(TAIL_OUTPUTS)})")
    _check_encoder(path, config)


def _check_encoder(path: Path, config: dict[str, Any]) -> None:
    """The input size and feature shape must be those of the named encoder: any other size would resize photos
    to a size the encoder (and the bundle's LiteRT file) was never built for."""
    encoder = config["encoder"]
    spec = find_spec(encoder["name"])
    if spec is None:
        return
    if encoder["input_size"] != spec.input_size:
        raise CaptionerError(f"{path}: 'encoder.input_size' is {encoder['input_size']} but {spec.name} takes "
                             f"{spec.input_size}x{spec.input_size} images")
    try:
        expected = list(output_shape(spec.name, encoder["output"]))
    except CaptionerError as exc:
        raise CaptionerError(f"{path}: 'encoder.output': {exc}") from exc
    if list(config["feature_shape"]) != expected:
        raise CaptionerError(f"{path}: 'feature_shape' {config['feature_shape']} but {spec.name} "
                             f"{encoder['output']} features are {expected}")


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a bundle's config.json without loading TensorFlow."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CaptionerError(f"{directory}: model bundle not found (run `dvc repro train` or pass --model DIR)")
    for name in (MODEL_FILE, VOCAB_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CaptionerError(f"{directory}: model bundle lacks {name}")
    config = _read_object(directory / CONFIG_FILE)
    if config.get("format") not in (BUNDLE_FORMAT, ENSEMBLE_FORMAT):
        raise CaptionerError(f"{directory / CONFIG_FILE}: bundle format {config.get('format')!r}, expected "
                             f"{BUNDLE_FORMAT} or {ENSEMBLE_FORMAT}")
    _check_config(directory / CONFIG_FILE, config)
    _check_members(directory, config)
    return config


def read_vocab(directory: str | os.PathLike[str], config: dict[str, Any]) -> Vocabulary:
    """Read and check a bundle's vocab.json against its (checked) config.json, without loading TensorFlow."""
    path = Path(directory) / VOCAB_FILE
    vocab = Vocabulary.from_json(_read_object(path), str(path))
    if vocab.max_length != config["decoding"]["max_length"]:
        raise CaptionerError(f"{path}: max_length {vocab.max_length} but {CONFIG_FILE} says decoding.max_length "
                             f"{config['decoding']['max_length']} (files from different runs?)")
    if len(vocab) != config["decoder"]["vocab_size"]:
        raise CaptionerError(f"{path}: {len(vocab)} tokens but {CONFIG_FILE} says decoder.vocab_size "
                             f"{config['decoder']['vocab_size']} (files from different runs?)")
    return vocab


def check_weights(directory: str | os.PathLike[str], name: str = MODEL_FILE) -> None:
    """Refuse a decoder file whose weights hold NaN or infinity (a diverged training) in one line naming the first
    such variable; reads the weights inside the zip with h5py, without TensorFlow. An unreadable file is left
    to the loader's own error."""
    import io

    import h5py
    import numpy as np

    path = Path(directory) / name
    try:
        with zipfile.ZipFile(path) as archive:
            weights = h5py.File(io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r")
    except (OSError, KeyError, zipfile.BadZipFile):
        return

    def nonfinite(name: str, node) -> tuple[str, int] | None:  # a value other than None ends the visit
        if isinstance(node, h5py.Dataset) and node.dtype.kind == "f":
            values = node[()]
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            return (name, bad) if bad else None
        return None

    with weights:
        found = weights.visititems(nonfinite)
    if found:
        name, bad = found
        raise CaptionerError(f"{path}: weights {name} hold {bad} NaN or infinite values (the training diverged; "
                             f"retrain with `dvc repro train`)")


def read_checked(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], Vocabulary]:
    """A bundle's checked config.json and vocab.json, after every decoder file's weights were found finite: what
    both runtimes need before they load anything (captioner.tflite holds the same weights)."""
    config = read_config(directory)
    vocab = read_vocab(directory, config)
    for name in member_files(config):
        check_weights(directory, name)
    return config, vocab


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Load a bundle and check that its files agree (vocabulary vs model output, feature shape vs model input)."""
    directory = Path(directory)
    config, vocab = read_checked(directory)
    models = [_load_decoder(directory, name, config, vocab) for name in member_files(config)]
    return Bundle(model=models[0], vocab=vocab, config=config, members=models[1:])


def _load_decoder(directory: Path, name: str, config: dict[str, Any], vocab: Vocabulary):
    """Load one decoder file of a bundle and check it against config.json (kind, feature shape) and the vocabulary."""
    from captioner.model.decoders import decoder_input_shape, decoder_kind, load_decoder

    if not zipfile.is_zipfile(directory / name):  # Keras would say "File not found" for a file that is there
        raise CaptionerError(f"{directory / name}: cannot load the decoder (not a valid Keras model file: "
                             "not a .keras zip archive)")
    try:
        model = load_decoder(directory / name)
    except Exception as exc:  # Keras raises many types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptionerError(f"{directory / name}: cannot load the decoder ({first})") from exc
    kind = config["decoder"]["kind"]
    try:
        model_kind = decoder_kind(model)
    except ValueError as exc:
        raise CaptionerError(f"{directory / name}: {exc}") from exc
    if model_kind != kind:
        raise CaptionerError(f"{directory}: config.json says decoder {kind!r} but {name} is {model_kind!r}")
    out_size = int(model.outputs[0].shape[-1])
    if out_size != len(vocab):
        raise CaptionerError(
            f"{directory}: {name} predicts {out_size} tokens but {VOCAB_FILE} has {len(vocab)} (files from different runs?)"
        )
    try:
        expected = decoder_input_shape(kind, config["feature_shape"])
    except ValueError as exc:
        raise CaptionerError(f"{directory / CONFIG_FILE}: {exc}") from exc
    got = tuple(int(d) for d in model.inputs[0].shape[1:])
    if got != expected:
        raise CaptionerError(
            f"{directory}: {name} takes image features {got} but config.json's feature_shape gives {expected}"
        )
    return model


# Ensembles: a format-2 bundle lists its decoder files in config.json's `members`.


def member_files(config: dict[str, Any]) -> list[str]:
    """The decoder files of a (checked) config, member 1 first: [decoder.keras] for a single-decoder bundle."""
    return list(config.get("members", [MODEL_FILE]))


def ensemble_config(config: dict[str, Any], count: int) -> dict[str, Any]:
    """Member 1's config.json made an ensemble's of `count` decoders: format 2, `members` decoder.keras,
    decoder_2.keras, ... (one decoder: the config as it is)."""
    if count == 1:
        return config
    names = [MODEL_FILE, *(f"decoder_{i}.keras" for i in range(2, count + 1))]
    return {**config, "format": ENSEMBLE_FORMAT, "members": names}


def _check_members(directory: Path, config: dict[str, Any]) -> None:
    """Format 2 lists 2..MAX_MEMBERS distinct plain .keras file names in `members`, decoder.keras first, each in
    the bundle folder; format 1 has no `members`."""
    path = directory / CONFIG_FILE
    members = config.get("members")
    if config["format"] == BUNDLE_FORMAT:
        if members is not None:
            raise CaptionerError(f"{path}: 'members' needs bundle format {ENSEMBLE_FORMAT}, not {BUNDLE_FORMAT}")
        return
    if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
        raise CaptionerError(f"{path}: 'members' must list 2 to {MAX_MEMBERS} decoder files, got {quote(members)}")
    for i, name in enumerate(members, start=1):
        if not isinstance(name, str) or name != Path(name).name or name.startswith(".") or not name.endswith(".keras"):
            raise CaptionerError(f"{path}: 'members' entry {i} {quote(name)} is not a .keras file name")
        if not (directory / name).is_file():
            raise CaptionerError(f"{directory}: model bundle lacks {name} (ensemble member {i})")
    if members[0] != MODEL_FILE or len(set(members)) != len(members):
        raise CaptionerError(f"{path}: 'members' must start with {MODEL_FILE} and name each file once, "
                             f"got {quote(members)}")
