"""The model bundle `models/captioner/`: decoder.keras + vocab.json + config.json, all `predict` needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.atomic import atomic_dir, write_json
from captioner.errors import CaptionerError
from captioner.jsonfile import read_json
from captioner.text import Vocabulary

MODEL_FILE = "decoder.keras"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
BUNDLE_FORMAT = 1


@dataclass
class Bundle:
    """A loaded, validated bundle: the training model, its vocabulary and config."""

    model: Any
    vocab: Vocabulary
    config: dict[str, Any]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one encoder feature (as extracted, before any pooling)."""
        return tuple(self.config["feature_shape"])

    @property
    def decoder_kind(self) -> str:
        """merge | inject | attention."""
        return self.config["decoder"]["kind"]


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


def save_bundle(directory: str | os.PathLike[str], model, vocab: Vocabulary, config: dict[str, Any]) -> None:
    """Write the three bundle files into `directory`, replacing it atomically."""
    with atomic_dir(directory) as tmp:
        model.save(tmp / MODEL_FILE)
        write_json(tmp / VOCAB_FILE, vocab.to_json())
        write_json(tmp / CONFIG_FILE, config)


def _read_object(path: Path) -> dict[str, Any]:
    """A bundle file that must hold one JSON object."""
    data = read_json(path, "bundle file", "train")
    if not isinstance(data, dict):
        raise CaptionerError(f"{path}: expected a JSON object")
    return data


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a bundle's config.json without loading TensorFlow."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CaptionerError(f"{directory}: model bundle not found (run `dvc repro train` or pass --model DIR)")
    for name in (MODEL_FILE, VOCAB_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CaptionerError(f"{directory}: model bundle lacks {name}")
    config = _read_object(directory / CONFIG_FILE)
    if config.get("format") != BUNDLE_FORMAT:
        raise CaptionerError(f"{directory / CONFIG_FILE}: bundle format {config.get('format')!r}, expected {BUNDLE_FORMAT}")
    required = {"encoder": ("name", "weights", "input_size", "output"), "decoder": ("kind",),
                "decoding": ("beam_size", "max_length")}
    for section, keys in required.items():
        missing = [k for k in keys if not isinstance(config.get(section), dict) or k not in config[section]]
        if missing:
            raise CaptionerError(f"{directory / CONFIG_FILE}: lacks {section}.{missing[0]}")
    try:
        config["feature_shape"] = [int(d) for d in config["feature_shape"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CaptionerError(f"{directory / CONFIG_FILE}: missing or malformed feature_shape") from exc
    return config


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Load a bundle and check that its files agree (vocabulary vs model output, feature shape vs model input)."""
    from captioner.model import decoder_input_shape, decoder_kind, load_decoder

    directory = Path(directory)
    config = read_config(directory)
    try:
        vocab = Vocabulary.from_json(_read_object(directory / VOCAB_FILE))
    except (KeyError, TypeError, ValueError) as exc:
        raise CaptionerError(f"{directory / VOCAB_FILE}: not a vocabulary ({exc})") from exc
    try:
        model = load_decoder(directory / MODEL_FILE)
    except Exception as exc:  # Keras raises many types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptionerError(f"{directory / MODEL_FILE}: cannot load the decoder ({first})") from exc
    kind = config["decoder"]["kind"]
    try:
        model_kind = decoder_kind(model)
    except ValueError as exc:
        raise CaptionerError(f"{directory / MODEL_FILE}: {exc}") from exc
    if model_kind != kind:
        raise CaptionerError(f"{directory}: config.json says decoder {kind!r} but {MODEL_FILE} is {model_kind!r}")
    out_size = int(model.outputs[0].shape[-1])
    if out_size != len(vocab):
        raise CaptionerError(
            f"{directory}: {MODEL_FILE} predicts {out_size} tokens but {VOCAB_FILE} has {len(vocab)} (files from different runs?)"
        )
    try:
        expected = decoder_input_shape(kind, config["feature_shape"])
    except ValueError as exc:
        raise CaptionerError(f"{directory / CONFIG_FILE}: {exc}") from exc
    got = tuple(int(d) for d in model.inputs[0].shape[1:])
    if got != expected:
        raise CaptionerError(
            f"{directory}: {MODEL_FILE} takes image features {got} but config.json's feature_shape gives {expected}"
        )
    return Bundle(model=model, vocab=vocab, config=config)
