"""Train a decoder on whole captions (teacher forcing, masked loss) from features held once in memory."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from captioner.errors import CaptionerError
from captioner.feature_store import FEATURES_FILE, load_features
from captioner.jsonfile import read_json
from captioner.text import PAD_ID, Vocabulary

DEFAULT_BEAM_SIZE = 3  # the bundle's decoding default for `captioner predict` (train doesn't read evaluate.*)
_MIN_DELTA = 1e-3  # val loss changes below this (nats per word) are noise, not progress
_CHUNK_BATCHES = 32  # length-bucketing window: captions are sorted by length within 32 batches' worth


@dataclass
class CaptionSet:
    """Captions of one split: feature row of each caption's image and its token ids (<start> ... <end> 0...)."""

    image_rows: np.ndarray  # (n,) int index into TrainData.features
    tokens: np.ndarray  # (n, max_length) int32

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class TrainData:
    """Everything training needs: one feature row per image (never duplicated per caption) and the splits."""

    features: np.ndarray
    image_names: list[str]  # image of each feature row
    feature_shape: tuple[int, ...]  # as extracted (grid shape even when pooled for merge/inject)
    feature_meta: dict[str, Any]
    vocab: Vocabulary
    train: CaptionSet
    val: CaptionSet


def load_train_data(features_dir: str | os.PathLike[str], processed_dir: str | os.PathLike[str], decoder: str) -> TrainData:
    """Read features.h5 + meta.json, vocab.json and sequences.npz; map each caption to its image's feature row."""
    from captioner.model import prepare_features

    features_dir, processed_dir = Path(features_dir), Path(processed_dir)
    names, features, attrs = load_features(features_dir / FEATURES_FILE)
    meta = {**attrs, **read_json(features_dir / "meta.json", "feature metadata", "extract_features")}
    feature_shape = tuple(int(d) for d in features.shape[1:])
    features = prepare_features(features, decoder, str(features_dir / FEATURES_FILE))

    seq_path = processed_dir / "sequences.npz"
    if not seq_path.is_file():
        raise CaptionerError(f"{seq_path}: not found (run `dvc repro tokenize`)")
    vocab = Vocabulary.from_json(read_json(processed_dir / "vocab.json", "vocabulary", "tokenize"))
    row_of = {name: i for i, name in enumerate(names)}
    with np.load(seq_path, allow_pickle=False) as seq:
        seq_names = [str(n) for n in seq["names"]]
        rows = np.array([row_of.get(n, -1) for n in seq_names], dtype=np.int64)
        splits = {}
        for split in ("train", "val"):
            key_img, key_tok = f"{split}_image", f"{split}_tokens"
            if key_img not in seq or key_tok not in seq:
                raise CaptionerError(f"{seq_path}: lacks {key_img}/{key_tok}")
            image_rows = rows[seq[key_img]]
            keep = image_rows >= 0  # images whose feature extraction was skipped (corrupt files)
            splits[split] = CaptionSet(image_rows[keep], seq[key_tok][keep].astype(np.int32))
    if not len(splits["train"]):
        raise CaptionerError(f"{seq_path}: no train captions with features in {features_dir / FEATURES_FILE}")
    return TrainData(features, list(names), feature_shape, meta, vocab, splits["train"], splits["val"])


def caption_lengths(tokens: np.ndarray) -> np.ndarray:
    """Number of real tokens per row (<start> ... <end>), i.e. up to the first pad."""
    return (tokens != PAD_ID).sum(axis=1)


def batch_plan(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Caption indices per batch, bucketed by length (sorted within windows of 32 batches), batch order shuffled."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    window = batch_size * _CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def make_dataset(features: np.ndarray, captions: CaptionSet, batch_size: int, seed: int | None):
    """tf.data of ((image features, input ids), target ids) batches padded to their own longest caption.

    Features stay one array in memory; each batch gathers its rows by index. A seed reshuffles every
    epoch (deterministically); None keeps a fixed length-sorted order (validation).
    """
    import tensorflow as tf

    lengths = caption_lengths(captions.tokens)
    rng = np.random.default_rng(seed) if seed is not None else None
    n_batches = len(batch_plan(lengths, batch_size, None))

    def batches() -> Iterator:
        for idx in batch_plan(lengths, batch_size, rng):
            width = int(lengths[idx].max())
            toks = captions.tokens[idx, :width]
            image = features[captions.image_rows[idx]].astype(np.float32)
            yield (image, toks[:, :-1]), toks[:, 1:]

    spec = (
        (
            tf.TensorSpec((None, *features.shape[1:]), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ),
        tf.TensorSpec((None, None), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def _open_live(directory: str):
    """A DVCLive logger that still writes its files where dvclive's DVC probing fails (a repo with no commit)."""
    from dvclive import Live

    class RobustLive(Live):
        def _init_dvc(self):
            try:
                super()._init_dvc()
            except Exception as exc:  # dvclive 3.49 raises SCMError("Empty git repo") before its own check
                print(f"warning: DVCLive logs without DVC integration ({exc})", file=sys.stderr)
                self._dvc_repo, self._save_dvc_exp = None, False
                self._dvc_file = self._init_dvc_file()

    return RobustLive(directory, save_dvc_exp=False, dvcyaml=None, report=None)


def _callbacks(params: dict[str, Any], live_dir: str | None, monitor: str):
    """Early stopping (best weights restored), LR decay on plateau, the time budget, DVCLive logging."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stop after `max_minutes`: at an epoch end when the next epoch would overrun, or mid-epoch at the limit."""

        def __init__(self, max_minutes: float):
            super().__init__()
            self.limit = max_minutes * 60.0
            self.stopped = False

        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - self.start > self.limit:
                self.stopped = self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            now = time.monotonic()
            if now - self.start + (now - self.epoch_start) > self.limit:
                self.stopped = self.model.stop_training = True

    class LiveLog(keras.callbacks.Callback):
        """Log per-epoch metrics to DVCLive as train/<name> and eval/<name> (val_ prefix), like DVCLiveCallback."""

        def __init__(self, directory: str):
            super().__init__()
            self.live = _open_live(directory)
            self.live.log_params({f"train.{k}": v for k, v in params.items()})

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                name = f"eval/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.live.log_metric(name, float(value))
            self.live.next_step()

        def on_train_end(self, logs=None):
            self.live.end()

    stop = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=params["patience"], min_delta=_MIN_DELTA, restore_best_weights=True
    )
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, factor=0.5, patience=1, min_delta=_MIN_DELTA, min_lr=params["learning_rate"] / 32
    )
    budget = TimeBudget(params["max_minutes"])
    extra = [LiveLog(live_dir)] if live_dir else []
    return [stop, plateau, budget, *extra], stop, budget


def fit_decoder(
    data: TrainData, params: dict[str, Any], seed: int, live_dir: str | None = "dvclive", verbose: int | str = "auto"
):
    """Build and train the `params['decoder']` model; return (model with the best weights, summary dict)."""
    import keras
    import tensorflow as tf

    from captioner.model import DecoderSpec, build_decoder, masked_loss

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    spec = DecoderSpec(
        kind=params["decoder"],
        vocab_size=len(data.vocab),
        feature_shape=data.feature_shape,
        embedding_dim=params["embedding_dim"],
        units=params["units"],
        dropout=params["dropout"],
    )
    model = build_decoder(spec)
    model.compile(optimizer=keras.optimizers.Adam(params["learning_rate"]), loss=masked_loss)
    train_ds = make_dataset(data.features, data.train, params["batch_size"], seed)
    has_val = len(data.val) > 0
    val_ds = make_dataset(data.features, data.val, params["batch_size"] * 2, None) if has_val else None
    monitor = "val_loss" if has_val else "loss"
    callbacks, stop, budget = _callbacks(params, live_dir, monitor)
    start = time.monotonic()
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=params["epochs"], callbacks=callbacks, verbose=verbose, shuffle=False
    )
    wall = time.monotonic() - start
    losses = history.history.get(monitor, [])
    epochs_run = len(history.history.get("loss", []))
    best_epoch = int(stop.best_epoch) + 1 if losses else 0  # the epoch whose weights were restored
    summary = {
        "decoder": spec.kind,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        f"best_{monitor}": float(losses[best_epoch - 1]) if losses else None,
        "final_train_loss": float(history.history["loss"][-1]) if epochs_run else None,
        "stopped_by": "time_budget" if budget.stopped else ("early_stopping" if stop.stopped_epoch else "epochs"),
        "wall_seconds": round(wall, 2),
        "train_captions": len(data.train),
        "captions_per_second": round(len(data.train) * epochs_run / wall, 1) if wall > 0 else None,
        "parameters": int(model.count_params()),
    }
    return model, summary


def _check_self_critical(train_params: dict[str, Any]) -> None:
    """Refuse self-critical settings that cannot work, before any data is loaded."""
    if train_params["scst_samples"] < 2:
        raise CaptionerError("params.yaml: train.scst_samples must be at least 2 (each sample's baseline is the others)")
    if train_params["scst_minutes"] >= train_params["max_minutes"]:
        raise CaptionerError("params.yaml: train.scst_minutes must be less than train.max_minutes")


def run_train(
    params: dict[str, Any],
    features_dir: str | os.PathLike[str],
    processed_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    live_dir: str | None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """The train stage: fit on the pipeline's outputs, write the bundle and metrics/train.json; return the metrics."""
    from captioner.atomic import write_json
    from captioner.bundle import make_config, save_bundle
    from captioner.corpus import read_captions

    train_params = params["train"]
    start = time.monotonic()
    self_critical_on = train_params["scst_epochs"] > 0
    if self_critical_on:
        _check_self_critical(train_params)
    data = load_train_data(features_dir, processed_dir, train_params["decoder"])
    xe_params = dict(train_params)
    if self_critical_on:
        captions = read_captions(Path(processed_dir) / "captions.json")
        references = [captions.get(name, []) for name in data.image_names]
        xe_params["max_minutes"] = train_params["max_minutes"] - train_params["scst_minutes"]
    model, summary = fit_decoder(data, xe_params, params["seed"], live_dir=live_dir, verbose=verbose)
    if self_critical_on:
        from captioner.scst import image_set, self_critical

        summary.update(
            self_critical(
                model,
                data.features,
                data.vocab,
                image_set(data.train.image_rows, references),
                image_set(data.val.image_rows, references),
                train_params,
                params["seed"],
                deadline=start + train_params["max_minutes"] * 60.0,
            )
        )
    summary["total_seconds"] = round(time.monotonic() - start, 1)
    meta = data.feature_meta
    encoder = {
        "name": meta.get("encoder"),
        "weights": meta.get("weights"),
        "weights_id": meta.get("weights_id"),
        "input_size": meta.get("input_size"),
        "preprocessing": meta.get("preprocessing"),
        "output": meta.get("output", "grid" if len(data.feature_shape) == 3 else "pooled"),
    }
    decoder = {
        "kind": train_params["decoder"],
        "embedding_dim": train_params["embedding_dim"],
        "units": train_params["units"],
        "dropout": train_params["dropout"],
        "vocab_size": len(data.vocab),
    }
    decoding = {"beam_size": DEFAULT_BEAM_SIZE, "max_length": data.vocab.max_length, "length_alpha": 1.0}
    save_bundle(model_dir, model, data.vocab, make_config(encoder, data.feature_shape, decoder, decoding))
    write_json(metrics_path, summary)
    return summary
