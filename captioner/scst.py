"""Self-critical sequence training (Rennie et al. 2017): fine-tune a decoder on its own sampled captions.

After cross-entropy training, each step draws k captions per image from the model, scores them with
CIDEr-D against that image's references, and raises the log-probability of the samples that beat the
mean of the other k-1 samples (the baseline) while lowering the others. This optimises the sentence-level
metric directly instead of next-word likelihood; the weights with the best greedy val CIDEr-D are kept.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from captioner.cider import CiderD
from captioner.text import PAD_ID, START_ID, Vocabulary


@dataclass
class ImageSet:
    """Unique images of one split: their feature rows and reference captions (cleaned text)."""

    rows: np.ndarray
    references: list[list[str]]


def image_set(image_rows: np.ndarray, references: Sequence[Sequence[str]]) -> ImageSet:
    """The distinct feature rows of a split's captions with the references of each (indexed by feature row)."""
    rows = np.unique(image_rows)
    return ImageSet(rows, [list(references[r]) for r in rows])


def policy_batch(samples: np.ndarray, rewards: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forcing inputs, targets and per-token weights for sampled captions (k per image, rows grouped).

    The weight of every real token of a sample is its advantage: reward minus the mean reward of the same
    image's other samples, divided by the batch's token count, so the weighted cross-entropy summed over the
    batch is the policy-gradient loss -sum(advantage * log p(sample)) / tokens.
    """
    grouped = rewards.reshape(-1, k)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / max(k - 1, 1)
    advantage = (grouped - baseline).reshape(-1)
    width = max(int((samples != PAD_ID).sum(axis=1).max()), 1)
    targets = samples[:, :width]
    inputs = np.concatenate([np.full((len(samples), 1), START_ID, dtype=np.int32), targets[:, :-1]], axis=1)
    mask = (targets != PAD_ID).astype(np.float32)
    weights = advantage[:, None].astype(np.float32) * mask / max(float(mask.sum()), 1.0)
    return inputs, targets, weights


def val_cider(decoder, features: np.ndarray, images: ImageSet, vocab: Vocabulary) -> float:
    """Greedy-decoded CIDEr-D (pycocoevalcap) of a split's images: the model-selection score."""
    from captioner.metrics import cider_d

    hyps = [vocab.decode(ids) for ids in decoder.greedy(features[images.rows])]
    return cider_d(images.references, hyps)


def self_critical(
    model,
    features: np.ndarray,
    vocab: Vocabulary,
    train: ImageSet,
    val: ImageSet,
    params: dict[str, Any],
    seed: int,
    deadline: float,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Fine-tune `model` in place for `params['scst_epochs']` epochs or until time.monotonic() passes `deadline`.

    Stops after the first epoch that does not raise greedy val CIDEr-D, keeps the weights with the best
    (the cross-entropy weights if no epoch beats them) and returns a summary for metrics/train.json.
    """
    import keras

    from captioner.decode import CaptionDecoder

    k, batch_images = int(params["scst_samples"]), int(params["scst_batch_images"])
    rng = np.random.default_rng(seed)
    decoder = CaptionDecoder(model, vocab.max_length)
    reward = CiderD(train.references)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    model.compile(optimizer=keras.optimizers.Adam(params["scst_learning_rate"]), loss=loss)
    start = time.monotonic()

    def score_val() -> float:
        return val_cider(decoder, features, val, vocab) if len(val.rows) else float("nan")

    score = score_val()
    history = {"start_val_cider": round(score, 4), "val_cider": [], "train_reward": []}
    best, best_weights, best_epoch, epochs_run = score, model.get_weights(), 0, 0
    for epoch in range(int(params["scst_epochs"])):
        order = rng.permutation(len(train.rows))
        rewards_seen = []
        for first in range(0, len(order), batch_images):
            if time.monotonic() > deadline:
                break
            local = order[first : first + batch_images]
            images = features[train.rows[local]]
            samples = decoder.sample(images, k, rng)
            captions = [vocab.decode(row) for row in samples]
            rewards = reward.scores(np.repeat(local, k), captions)
            rewards_seen.append(float(rewards.mean()))
            inputs, targets, weights = policy_batch(samples, rewards, k)
            model.train_on_batch([np.repeat(images, k, axis=0), inputs], targets, sample_weight=weights)
        if not rewards_seen:
            break
        epochs_run = epoch + 1
        score = score_val()
        history["val_cider"].append(round(score, 4))
        history["train_reward"].append(round(float(np.mean(rewards_seen)), 4))
        log(f"self-critical epoch {epoch + 1}: mean sample CIDEr-D {np.mean(rewards_seen):.3f}, val CIDEr-D {score:.3f}")
        if not score <= best:  # also takes the first epoch when there is no val split (nan)
            best, best_weights, best_epoch = score, model.get_weights(), epoch + 1
        elif not math.isnan(score):  # an epoch that loses val CIDEr-D: later ones only drifted further (measured)
            log(f"self-critical: val CIDEr-D fell below its best {best:.3f}; stopping")
            break
        if time.monotonic() > deadline:
            break
    model.set_weights(best_weights)
    return {
        "scst_epochs_run": epochs_run,
        "scst_best_epoch": best_epoch,
        "scst_seconds": round(time.monotonic() - start, 1),
        **{f"scst_{key}": value for key, value in history.items()},
    }
