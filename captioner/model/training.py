"""The train stage: a decoder trained on whole captions (teacher forcing, masked loss), features read per batch."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from captioner.core.errors import CaptionerError
from captioner.model.distribute import (
    Placement, agree, prepare_for_cluster, cap_sync_due, lost_worker, placement, read_cluster, worker_share,
)
from captioner.model.finite import stop_on_nonfinite
from captioner.model.views import Mirror, show, view_draws
from captioner.vision.encoders import tail_encoder
from captioner.vision.feature_store import FEATURES_FILE, FLIPPED, FeatureReader, prepare_features
from captioner.core.jsonfile import read_json
from captioner.data.text import PAD_ID, Vocabulary

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

    features: Any  # rows by index: a FeatureReader (per batch from the file) or an in-memory array
    image_names: list[str]  # image of each feature row
    feature_shape: tuple[int, ...]  # as extracted (grid shape even when pooled for merge/inject)
    feature_meta: dict[str, Any]
    vocab: Vocabulary
    train: CaptionSet
    val: CaptionSet
    mirror: Mirror | None = None  # the mirrored view (a file extracted with features.flip), read like `features`


def load_train_data(features_dir: str | os.PathLike[str], processed_dir: str | os.PathLike[str], decoder: str) -> TrainData:
    """Read features.h5 + meta.json, vocab.json and sequences.npz; map each caption to its image's feature row.

    A feature file with the mirrored view (`features.flip`) gives `mirror`: training shows both views.
    """
    features_dir, processed_dir = Path(features_dir), Path(processed_dir)
    reader = FeatureReader(features_dir / FEATURES_FILE)
    names, attrs = reader.names, reader.attrs
    meta = {**attrs, **read_json(features_dir / "meta.json", "feature metadata", "extract_features")}
    feature_shape = tuple(int(d) for d in reader.feature_shape)
    features = prepare_features(reader, decoder, str(features_dir / FEATURES_FILE))

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
    mirror = None
    if reader.has_flipped:
        flipped = FeatureReader(features_dir / FEATURES_FILE, FLIPPED)
        mirror = Mirror.of(prepare_features(flipped, decoder, f"{features_dir / FEATURES_FILE} ({FLIPPED})"), vocab)
    return TrainData(features, list(names), feature_shape, meta, vocab, splits["train"], splits["val"], mirror)


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


def captions_by_image(image_rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct feature rows of a caption set and, for each, the indices of its captions."""
    rows, inverse = np.unique(image_rows, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return rows, np.split(order, np.cumsum(np.bincount(inverse, minlength=len(rows)))[:-1])


def image_batch_plan(
    captions: CaptionSet, images_per_batch: int, k: int, rng: np.random.Generator, multiple: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (feature rows (B,), caption indices (B*k,)) batches: every image once with k of its captions.

    An image with more than k captions gives a random k of them (others come up in later epochs); one with
    fewer repeats some. Images are sorted by their longest picked caption within windows of 32 batches, so a
    batch pads little, and the batch order is shuffled. With `multiple` > 1 (devices), a batch's image count
    is cut to a multiple of it, so every device gets whole images; the few left out change every epoch.
    """
    rows, groups = captions_by_image(captions.image_rows)
    lengths = caption_lengths(captions.tokens)
    picked = np.stack([np.resize(rng.permutation(g), k) for g in groups])  # (n_images, k)
    longest = lengths[picked].max(axis=1)
    order = rng.permutation(len(rows))
    window = images_per_batch * _CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(longest[chunk], kind="stable")]
        for i in range(0, len(chunk), images_per_batch):
            members = chunk[i : i + images_per_batch]
            members = members[: len(members) - len(members) % multiple]
            if len(members):
                batches.append((rows[members], picked[members].reshape(-1)))
    return [batches[i] for i in rng.permutation(len(batches))]


def _as_model_batch(features, tokens: np.ndarray, image_rows: np.ndarray, caption_ids: np.ndarray,
                    parts: int = 1, part: int = 0):
    """((images (B, ...) float32, input ids (B*k, w-1)), target ids (B*k, w-1)), w the batch's longest caption.

    With `parts` > 1 (a cluster's replicas), only the part-th share of the images (and their captions) is
    read, padded to the whole batch's longest caption so that every replica's step has the same shapes.
    """
    toks = tokens[caption_ids]
    width = max(int(caption_lengths(toks).max()), 2)
    if parts > 1:
        share = worker_share(len(image_rows), parts, part)
        per_image = len(caption_ids) // len(image_rows)
        image_rows = image_rows[share]
        toks = toks[share.start * per_image : share.stop * per_image]
    toks = toks[:, :width]
    return (np.asarray(features[image_rows], dtype=np.float32), toks[:, :-1]), toks[:, 1:]


def make_dataset(
    features, captions: CaptionSet, batch_size: int, seed: int | None, captions_per_image: int = 1, devices: int = 1,
    parts: int = 1, part_ids: Sequence[int] = (0,), mirror: Mirror | None = None,
):
    """tf.data of ((image features, input ids), target ids) batches padded to their own longest caption.

    With `captions_per_image` k > 1 (training), a batch holds batch_size // k images, each with k of its
    captions, so the decoder's image side runs once per image; a seed reshuffles every epoch
    (deterministically). With k = 1 every caption comes once with its own image row, length-bucketed; seed
    None keeps a fixed order (validation). Each batch reads its images' rows from `features` (a FeatureReader or
    an array), so memory does not grow with the number of images. With `parts` > 1 (the replicas of a
    TF_CONFIG cluster), every worker plans the same global batches and yields, per batch, only the shares
    `part_ids` of its own replicas (a batch of k = 1 captions is cut to a multiple of `parts`); the global
    batch stays `batch_size`. With `mirror` (training only: it needs the seed), each image of a batch is shown
    as it is or mirrored, drawn per image and epoch, its captions following (`views.show`).
    """
    import tensorflow as tf

    lengths = caption_lengths(captions.tokens)
    source, tokens = features, captions.tokens
    if mirror is not None:
        if seed is None:
            raise ValueError("mirrored views need a seed")
        source, tokens = mirror.sources(features, captions.tokens)
        draws = view_draws(seed)

    def view(rows: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows and caption indices of a batch in `source` and `tokens`: one view per image."""
        return (rows, ids) if mirror is None else show(draws, rows, ids, len(features), len(captions))

    rng = np.random.default_rng(seed) if seed is not None else None
    grouped = captions_per_image > 1
    if grouped:
        if rng is None:
            raise ValueError("grouped batches need a seed")
        images_per_batch = max(batch_size // captions_per_image, 1)
        plan = image_batch_plan(captions, images_per_batch, captions_per_image, np.random.default_rng(0), devices)
        n_batches = len(plan)
    else:
        n_batches = sum(len(idx) >= parts for idx in batch_plan(lengths, batch_size, None))

    def batches() -> Iterator:
        if grouped:
            for rows, ids in image_batch_plan(captions, images_per_batch, captions_per_image, rng, devices):
                rows, ids = view(rows, ids)
                for part in part_ids:
                    yield _as_model_batch(source, tokens, rows, ids, parts, part)
        else:
            for idx in batch_plan(lengths, batch_size, rng):
                idx = idx[: len(idx) - len(idx) % parts]
                rows, ids = view(captions.image_rows[idx], idx)
                for part in part_ids if len(idx) else ():
                    yield _as_model_batch(source, tokens, rows, ids, parts, part)

    spec = (
        (
            tf.TensorSpec((None, *features.shape[1:]), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ),
        tf.TensorSpec((None, None), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    if len(part_ids) == 1:  # Keras takes elements for steps: with several per step it counts them as it goes
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    return ds.prefetch(2)


def open_live(directory: str):
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


CLOCK_KEYS = ("wall_seconds", "captions_per_second", "seconds", "save_seconds", "total_seconds")


def write_metrics(path: str | os.PathLike[str], summary: dict[str, Any]) -> None:
    """Write a stage's metrics without its wall-clock entries: the same run gives the same file, so a fresh
    `dvc repro` of committed results leaves `git status` and `dvc status` clean (the stage prints its times)."""
    from captioner.core.atomic import write_json

    write_json(path, {key: value for key, value in summary.items() if key not in CLOCK_KEYS})


class TimeCap:
    """The stage's safety cap on wall-clock time: epochs decide the result; the cap only ends a runaway run."""

    def __init__(self, max_minutes: float, start: float | None = None):
        self.deadline = (time.monotonic() if start is None else start) + max_minutes * 60.0
        self.hit = False

    def passed(self) -> bool:
        """True (and remembered) once the deadline has passed."""
        self.hit = self.hit or time.monotonic() > self.deadline
        return self.hit

    def callback(self, place: Placement | None = None):
        """A Keras callback that stops training at the first batch past the deadline.

        Under a TF_CONFIG cluster the workers agree every few batches and at the end of each epoch (any
        worker past it stops all), so they all stop after the same step.
        """
        import keras

        cap = self
        cluster = place is not None and place.cluster is not None

        class StopAtCap(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if not cluster:
                    self.model.stop_training = self.model.stop_training or cap.passed()
                elif cap_sync_due(batch):
                    self.on_epoch_end(batch)

            def on_epoch_end(self, epoch, logs=None):
                if cluster:
                    cap.hit = agree(place, cap.passed())
                    self.model.stop_training = self.model.stop_training or cap.hit

        return StopAtCap()


def _callbacks(params: dict[str, Any], live_dir: str | None, monitor: str, cap: TimeCap, place: Placement):
    """The non-finite loss stop (first: nothing logs or restores a NaN), early stopping (best weights restored),
    LR decay on plateau, the time cap, DVCLive logging."""
    import keras

    stop = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=params["patience"], min_delta=_MIN_DELTA, restore_best_weights=True
    )
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, factor=0.5, patience=1, min_delta=_MIN_DELTA, min_lr=params["learning_rate"] / 32
    )
    extra = []
    if live_dir:
        from dvclive.keras import DVCLiveCallback

        live = open_live(live_dir)
        live.log_params({f"train.{k}": v for k, v in params.items()})
        extra.append(DVCLiveCallback(live=live))
    return [stop_on_nonfinite(), stop, plateau, cap.callback(place), *extra], stop


def decoder_spec(params: dict[str, Any], vocab_size: int, feature_shape: tuple[int, ...], tail: str | None = None):
    """The DecoderSpec that train.* params describe (with `tail`, the encoder whose last stage the decoder runs)."""
    from captioner.model.decoders import DecoderSpec

    return DecoderSpec(
        kind=params["decoder"],
        vocab_size=vocab_size,
        feature_shape=feature_shape,
        embedding_dim=params["embedding_dim"],
        units=params["units"],
        dropout=params["dropout"],
        heads=params["attention_heads"],
        output_units=params["output_units"],
        tail=tail,
    )


def fit_decoder(
    data: TrainData,
    params: dict[str, Any],
    seed: int,
    live_dir: str | None = "dvclive",
    verbose: int | str = "auto",
    cap: TimeCap | None = None,
):
    """Build and train the `params['decoder']` model; return (model with the best weights, summary dict).

    The model computes in `params['precision']` (resolved: bfloat16 only where the hardware has it and the data is
    big enough, `precision.resolve_precision`) on
    `params['devices']` devices (data-parallel through tf.distribute.MirroredStrategy above one), or on
    every worker of the `TF_CONFIG` cluster (MultiWorkerMirroredStrategy, DVCLive on the chief only). The
    model returned is on one device, still in the training precision.
    """
    import keras
    import tensorflow as tf

    from captioner.model.decoders import build_decoder, caption_loss
    from captioner.model.tail import TailAdam, TailSchedule, start_tail, tail_paths
    from captioner.core.precision import keras_policy, resolve_precision

    cluster = read_cluster()
    place = placement(params["devices"], cluster)  # first: a cluster's strategy must come before any op
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    cap = cap or TimeCap(params["max_minutes"])
    precision = resolve_precision(params["precision"], len(data.train))
    spec = decoder_spec(params, len(data.vocab), data.feature_shape, tail_encoder(data.feature_meta))
    devices, workers = place.replicas, place.workers
    per_image, batch_size = params["captions_per_image"], params["batch_size"]
    train_ds = place.datasets(lambda *parts: make_dataset(data.features, data.train, batch_size, seed, per_image,
                                                          devices, *parts, mirror=data.mirror))
    has_val = len(data.val) > 0
    val_ds = place.datasets(lambda *parts: make_dataset(data.features, data.val, batch_size, None, 1, 1, *parts))
    val_ds = val_ds if has_val else None
    monitor = "val_loss" if has_val else "loss"
    callbacks, stop = _callbacks(params, live_dir if place.is_chief else None, monitor, cap, place)
    start = time.monotonic()
    with place.scope():
        model = build_decoder(spec, keras_policy(precision))
        optimizer = keras.optimizers.Adam(params["learning_rate"])
        if spec.tail:
            start_tail(model, data.feature_meta, "the feature file's meta.json")
            optimizer = TailAdam(tail_paths(model), learning_rate=params["learning_rate"])
            callbacks.append(TailSchedule(params["tail_from_epoch"], params["tail_learning_rate"] / params["learning_rate"]))
        model.compile(optimizer=optimizer, loss=caption_loss(), jit_compile=False)
        prepare_for_cluster(model, place, data.features.shape[1:])
        try:
            history = model.fit(
                train_ds, validation_data=val_ds, epochs=params["epochs"], callbacks=callbacks, verbose=verbose,
                shuffle=False,
            )
        except Exception as exc:
            lost = lost_worker(exc, cluster) if cluster else None
            if lost is None:
                raise
            raise lost from None
    wall = time.monotonic() - start
    losses = history.history.get(monitor, [])
    epochs_run = len(history.history.get("loss", []))
    best_epoch = int(stop.best_epoch) + 1 if losses else 0  # the epoch whose weights were restored
    captions_per_epoch = len(np.unique(data.train.image_rows)) * per_image if per_image > 1 else len(data.train)
    summary = {
        "decoder": spec.kind,
        "precision": precision,
        "devices": devices,
        "workers": workers,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        f"best_{monitor}": float(losses[best_epoch - 1]) if losses else None,
        "final_train_loss": float(history.history["loss"][-1]) if epochs_run else None,
        "train_loss": [round(float(x), 4) for x in history.history.get("loss", [])],
        "stopped_by": "time_cap" if cap.hit else ("early_stopping" if stop.stopped_epoch else "epochs"),
        "wall_seconds": round(wall, 2),
        "train_captions": len(data.train),
        "captions_per_second": round(captions_per_epoch * epochs_run / wall, 1) if wall > 0 else None,
        "parameters": int(model.count_params()),
    }
    return (copy_decoder(model, spec, keras_policy(precision)) if place.strategy else model), summary


def copy_decoder(model, spec, dtype: str = "float32"):
    """The same weights in a decoder built outside any distribution strategy, computing in `dtype`."""
    from captioner.model.decoders import build_decoder

    copy = build_decoder(spec, dtype)
    copy.set_weights(model.get_weights())
    return copy


def encoder_config(meta: dict[str, Any], feature_shape: tuple[int, ...]) -> dict[str, Any]:
    """The bundle's `encoder` entry from the feature file's metadata: what rebuilds the encoder for new photos."""
    return {
        "name": meta.get("encoder"),
        "weights": meta.get("weights"),
        "weights_id": meta.get("weights_id"),
        "input_size": meta.get("input_size"),
        "preprocessing": meta.get("preprocessing"),
        "output": meta.get("output", "grid" if len(feature_shape) == 3 else "pooled"),
    }


def run_train(
    params: dict[str, Any],
    features_dir: str | os.PathLike[str],
    processed_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    live_dir: str | None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """The train stage: cross-entropy on the pipeline's outputs; write the model (a bundle without LiteRT) and metrics.

    The finetune stage reads that model and goes on with self-critical training (or passes it through). On a
    worker of a TF_CONFIG cluster other than the chief it trains its share and writes nothing.
    """
    from captioner.model.bundle import make_config, save_bundle

    train_params = params["train"]
    start = time.monotonic()
    cap = TimeCap(train_params["max_minutes"], start)
    data = load_train_data(features_dir, processed_dir, train_params["decoder"])
    model, summary = fit_decoder(data, train_params, params["seed"], live_dir=live_dir, verbose=verbose, cap=cap)
    cluster = read_cluster()
    if cluster and not cluster.is_chief:  # a worker that shared cross-entropy training writes nothing
        return summary
    spec = decoder_spec(train_params, len(data.vocab), data.feature_shape, tail_encoder(data.feature_meta))
    if summary["precision"] != "float32":  # the saved model is float32 whatever the training precision
        model = copy_decoder(model, spec)
    summary["time_cap_hit"] = cap.hit
    summary["total_seconds"] = round(time.monotonic() - start, 1)
    decoder = {key: getattr(spec, key) for key in ("kind", "embedding_dim", "units", "dropout", "heads",
                                                    "output_units", "vocab_size")}  # Bundle.decoder_spec reads it back
    if spec.tail:
        decoder["tail"] = spec.tail
    decoding = {"beam_size": DEFAULT_BEAM_SIZE, "max_length": data.vocab.max_length, "length_alpha": 1.0}
    config = make_config(encoder_config(data.feature_meta, data.feature_shape), data.feature_shape, decoder, decoding)
    save_bundle(model_dir, model, data.vocab, config)
    write_metrics(metrics_path, summary)
    return summary
