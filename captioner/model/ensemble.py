"""Ensemble bundles: several trained decoders of one vocabulary and encoder, captioning as one model.

`assemble` checks that member bundles agree (vocabulary, encoder, feature shape, decoder kind) and writes an
ensemble bundle (format 2, see `bundle.py`): the members' decoder.keras files copied byte for byte, member 1's
vocabulary and config with `members` added, and optionally a captioner.tflite whose `init`/`step` run every
member (`decoders.ensemble_step_models`). One member gives its bundle's files byte for byte (config.json too unless
another `length_alpha` or `flip` is set). Decoding averages
the members' per-word probabilities inside the same batched beam search (`CaptionDecoder` and `LiteDecoder` need
nothing else). `assemble_members` is the pipeline's `assemble` stage: the bundles of the seeds in params.yaml's
`members`, one folder per seed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from captioner.core.atomic import atomic_dir, write_json
from captioner.core.errors import CaptionerError
from captioner.core.schema import check, quote
from captioner.data.text import Vocabulary, mirror_ids
from captioner.model.bundle import (
    CONFIG_FIELDS, CONFIG_FILE, MAX_MEMBERS, MODEL_FILE, VOCAB_FILE, ensemble_config, load_bundle, member_files,
    read_config, read_vocab,
)
from captioner.model.litert import LITERT_FILE, litert_bytes


def assemble(member_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
             litert: bool = True, length_alpha: float | None = None, flip: bool | None = None) -> dict[str, Any]:
    """Write an ensemble bundle of the bundles in `member_dirs` to `out_dir` (replaced atomically); return its config.

    With `litert`, also captioner.tflite (the bundle's encoder and the ensemble's decoding graphs). One member gives
    a copy of it in the single-decoder format, byte for byte but for that alpha and flip (its own captioner.tflite
    too, unless flip changes the decoding graphs). Members that disagree are a one-line error naming the member.
    `length_alpha` (None: member 1's) is written into the bundle's `decoding.length_alpha`, which ranks finished beams
    wherever the bundle captions. `flip` (None: member 1's) sets `decoding.flip`: every member reads each image as it
    is and mirrored, wherever the bundle captions.
    """
    dirs = [Path(d) for d in member_dirs]
    out = Path(out_dir)
    if length_alpha is not None:  # the range a bundle's config.json allows
        check("length_alpha", "decoding.length_alpha", length_alpha, CONFIG_FIELDS["decoding.length_alpha"])
    _check_places(dirs, out)
    configs = [read_config(d) for d in dirs]
    vocabs = [read_vocab(d, c) for d, c in zip(dirs, configs)]
    for i, (directory, config, vocab) in enumerate(zip(dirs, configs, vocabs), start=1):
        if len(member_files(config)) > 1:
            raise CaptionerError(f"{directory}: already an ensemble of {len(member_files(config))} decoders; "
                                 "list its members' bundles instead")
        reason = _difference(configs[0], vocabs[0], config, vocab)
        if reason:
            raise CaptionerError(f"{directory} (member {i}): {reason} (member 1: {dirs[0]})")
    config = ensemble_config(configs[0], len(dirs))
    decoding = dict(config["decoding"])
    if length_alpha is not None:
        decoding["length_alpha"] = float(length_alpha)
    if flip is not None:
        decoding.pop("flip", None)  # absent means false: a plain member's config stays its own
        if flip:
            decoding["flip"] = True
    config = {**config, "decoding": decoding}
    same_graphs = bool(decoding.get("flip")) == bool(configs[0]["decoding"].get("flip"))
    own_litert = dirs[0] / LITERT_FILE if len(dirs) == 1 and same_graphs and (dirs[0] / LITERT_FILE).is_file() else None
    convert = litert and own_litert is None
    # Every file is checked before anything is written; one member copied as it is (no conversion) needs no
    # TensorFlow: its config and vocabulary are checked above, its decoder when the copy is loaded.
    models = [load_bundle(d).model for d in dirs] if convert or len(dirs) > 1 else []
    mirror = mirror_ids(vocabs[0]) if decoding.get("flip") else None
    encoder = _encoder(configs[0]) if convert else None
    with atomic_dir(out) as tmp:
        for directory, name in zip(dirs, member_files(config)):
            shutil.copyfile(directory / MODEL_FILE, tmp / name)
        write_json(tmp / VOCAB_FILE, vocabs[0].to_json())
        write_json(tmp / CONFIG_FILE, config)
        if litert and own_litert is not None:
            shutil.copyfile(own_litert, tmp / LITERT_FILE)
        elif encoder is not None:
            (tmp / LITERT_FILE).write_bytes(litert_bytes(encoder, models[0] if len(models) == 1 else models, mirror))
    return config


def assemble_members(params: dict[str, Any], members_dir: str | os.PathLike[str],
                     out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The pipeline's bundle in `out_dir`: the bundles `members_dir`/SEED of params' `members`, in that order, assembled
    (with captioner.tflite when `scst.litert`, decoding with `assemble.length_alpha` and `assemble.flip`); return its
    config. A missing member is a one-line error."""
    dirs = [Path(members_dir) / str(seed) for seed in params["members"]]
    for seed, directory in zip(params["members"], dirs):
        if not (directory / CONFIG_FILE).is_file():
            raise CaptionerError(f"{directory}: no bundle of member {seed} (its stages: dvc repro finetune@{seed})")
    return assemble(dirs, out_dir, litert=params["scst"]["litert"], length_alpha=params["assemble"]["length_alpha"],
                    flip=params["assemble"]["flip"])


def _check_places(dirs: list[Path], out: Path) -> None:
    """1..MAX_MEMBERS distinct members; the output is none of them and not a folder other than a bundle (it is replaced)."""
    if not 1 <= len(dirs) <= MAX_MEMBERS:
        raise CaptionerError(f"an ensemble takes 1 to {MAX_MEMBERS} member bundles, got {len(dirs)}")
    resolved = [d.resolve() for d in dirs]
    for i, where in enumerate(resolved):
        if where in resolved[:i]:
            raise CaptionerError(f"{dirs[i]}: given twice (member {resolved.index(where) + 1} and {i + 1})")
        if where == out.resolve():
            raise CaptionerError(f"{out}: the output is member {i + 1}'s folder; write the ensemble elsewhere")
    if out.exists() and not (out.is_dir() and ((out / CONFIG_FILE).is_file() or not any(out.iterdir()))):
        raise CaptionerError(f"{out}: exists and is not a model bundle; not replacing it")


def _difference(first: dict[str, Any], first_vocab: Vocabulary, config: dict[str, Any], vocab: Vocabulary) -> str:
    """How a member differs from member 1 in what an ensemble shares, or "" if it does not."""
    if vocab.tokens != first_vocab.tokens:
        if len(vocab) != len(first_vocab):
            return f"its vocabulary has {len(vocab)} tokens, member 1's {len(first_vocab)}"
        i = next(i for i, (a, b) in enumerate(zip(vocab.tokens, first_vocab.tokens)) if a != b)
        return (f"its vocabulary differs from member 1's (token {i} is {quote(vocab.tokens[i])}, "
                f"not {quote(first_vocab.tokens[i])})")
    if vocab.max_length != first_vocab.max_length:
        return f"its vocabulary's max_length is {vocab.max_length}, member 1's {first_vocab.max_length}"
    enc, first_enc = config["encoder"], first["encoder"]
    for key in sorted(set(enc) | set(first_enc)):
        if enc.get(key) != first_enc.get(key):
            return f"encoder.{key} is {quote(enc.get(key))}, member 1's {quote(first_enc.get(key))}"
    if config["feature_shape"] != first["feature_shape"]:
        return f"feature_shape is {config['feature_shape']}, member 1's {first['feature_shape']}"
    if config["decoder"]["kind"] != first["decoder"]["kind"]:
        return f"it is a {config['decoder']['kind']} decoder, member 1 a {first['decoder']['kind']}"
    return ""


def _encoder(config: dict[str, Any]):
    """The bundle's encoder (Keras) for the LiteRT file; one line if the config names none the registry builds."""
    from captioner.vision.encoders import build_encoder, find_spec

    enc = config["encoder"]
    if find_spec(enc["name"]) is None:
        raise CaptionerError(f"encoder {enc['name']!r} is not one captioner can build, so no {LITERT_FILE} "
                             "can hold it; assemble without LiteRT (--no-litert)")
    return build_encoder(enc["name"], enc["weights"], enc["output"])
