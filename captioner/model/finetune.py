"""The finetune stage: self-critical training of the train stage's model, then the bundle that serving reads.

It runs in its own process from the saved cross-entropy model, so a self-critical experiment re-runs only
this stage (and evaluate); `scst.epochs: 0` passes the cross-entropy model through as the bundle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

CURVES = ("val_cider", "val_bleu4", "train_reward", "sample_words")  # DVCLive metrics, one point per epoch


def _curve_logger(live_dir: str | None, params: dict[str, Any]):
    """(log one epoch's scores, close): DVCLive steps 0 (the cross-entropy model), 1, 2, ... or no-ops."""
    if not live_dir:
        return (lambda scores: None), (lambda: None)
    from captioner.model.training import open_live

    live = open_live(live_dir)
    live.log_params({f"scst.{key}": value for key, value in params.items()})

    def log(scores: dict[str, float]) -> None:
        for name in CURVES:
            if scores.get(name) is not None:  # None: no val split to score
                live.log_metric(name, scores[name])
        live.next_step()

    return log, live.end


def run_finetune(
    params: dict[str, Any],
    features_dir: str | os.PathLike[str],
    processed_dir: str | os.PathLike[str],
    xe_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    live_dir: str | None,
) -> dict[str, Any]:
    """Self-critical training (params' `scst` section and `seed`) of the model in `xe_dir`; write the bundle
    (with `captioner.tflite` when `scst.litert`) and the metrics; return the metrics."""
    import keras
    import tensorflow as tf

    from captioner.core.precision import keras_policy, resolve_precision
    from captioner.model.bundle import load_bundle, save_bundle
    from captioner.model.training import TimeCap, copy_decoder, load_train_data, write_metrics

    scst = params["scst"]
    start = time.monotonic()
    cap = TimeCap(scst["max_minutes"], start)
    xe = load_bundle(xe_dir)
    spec = xe.decoder_spec
    data = load_train_data(features_dir, processed_dir, spec.kind) if scst["epochs"] > 0 else None
    precision = resolve_precision(scst["precision"], len(data.train) if data is not None else None)
    summary: dict[str, Any] = {"precision": precision, "epochs_run": 0}
    model = xe.model
    if data is not None:
        from captioner.data.corpus import read_captions
        from captioner.model.scst import image_set, self_critical
        from captioner.model.tail import tail_frozen

        keras.utils.set_random_seed(params["seed"])
        tf.config.experimental.enable_op_determinism()
        captions = read_captions(Path(processed_dir) / "captions.json")
        references = [captions.get(name, []) for name in data.image_names]
        model = copy_decoder(xe.model, spec, keras_policy(precision))
        log_curve, close_curves = _curve_logger(live_dir, scst)
        with tail_frozen(model):  # a fine-tuned encoder tail keeps its cross-entropy weights (docs/encoder-tail.md)
            history = self_critical(
                model, data.features, xe.vocab, image_set(data.train.image_rows, references),
                image_set(data.val.image_rows, references), scst, params["seed"], cap=cap, on_epoch=log_curve,
                on_start=log_curve, mirrored=data.mirror.rows if data.mirror else None,
            )
        close_curves()
        summary.update(history)
        if precision != "float32":  # the bundle is float32 whatever the training precision
            model = copy_decoder(model, spec)
    summary["time_cap_hit"] = cap.hit
    saving = time.monotonic()
    encoder = None
    if scst["litert"]:  # the bundle's encoder, converted with the decoder for a TensorFlow-free start
        from captioner.vision.encoders import build_encoder

        enc = xe.config["encoder"]
        encoder = build_encoder(enc["name"], enc["weights"], enc["output"])
    save_bundle(model_dir, model, xe.vocab, xe.config, encoder)
    summary["save_seconds"] = round(time.monotonic() - saving, 1)
    summary["total_seconds"] = round(time.monotonic() - start, 1)
    write_metrics(metrics_path, summary)
    return summary
