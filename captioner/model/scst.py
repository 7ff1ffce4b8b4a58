"""Self-critical sequence training (Rennie et al. 2017): fine-tune a decoder on its own sampled captions.

After cross-entropy training, each step draws k captions per image from the model, scores them with
CIDEr-D against that image's references, and raises the log-probability of the samples that beat the
mean of the other k-1 samples (the baseline) while lowering the others. This optimises the sentence-level
metric directly instead of next-word likelihood; the weights with the best greedy val CIDEr-D are kept.
With a mirrored view (`features.flip`) each train image comes up, as in cross-entropy training, in a view
drawn at random, the mirrored one judged against its references with `left` and `right` swapped; document
frequencies then come from the references of both views. Val is scored on the images as they are.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from captioner.model.cider import CiderD
from captioner.model.finite import require_finite, rounded
from captioner.data.text import PAD_ID, START_ID, Vocabulary, mirror_caption
from captioner.model.views import BothViews, show, view_draws

_VAL_CHUNK = 256  # images decoded per read when scoring val


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


def val_scores(decoder, features: np.ndarray, images: ImageSet, vocab: Vocabulary) -> tuple[float, float]:
    """Greedy-decoded CIDEr-D (pycocoevalcap; it selects the weights) and corpus BLEU-4 (NLTK) of a split's images."""
    from captioner.model.metrics import cider_d, corpus_bleu_scores

    hyps = []
    for first in range(0, len(images.rows), _VAL_CHUNK):  # rows read per chunk, never the whole split at once
        chunk = np.asarray(features[images.rows[first : first + _VAL_CHUNK]], dtype=np.float32)
        hyps.extend(vocab.decode(ids) for ids in decoder.greedy(chunk))
    return cider_d(images.references, hyps), corpus_bleu_scores(images.references, hyps, orders=(4,))["bleu4"]


def policy_step(model, learning_rate: float, vocab_size: int) -> Callable:
    """A compiled step `(images, inputs, targets, weights) -> loss` of the exact policy gradient (NaN when a
    gradient is NaN or infinite, so the caller stops on a diverging step even if its loss was finite).

    The log-probabilities are those of the policy that drew the samples: dropout off (sampling runs with
    training=False) and pad/start/unk removed from the softmax (sampling never picks them). A gradient taken
    with dropout on, or over the full softmax, belongs to a different policy than the one sampled.
    """
    import keras
    import tensorflow as tf

    from captioner.model.decode import BANNED_IDS
    from captioner.model.decoders import packed_rows

    optimizer = keras.optimizers.Adam(learning_rate)
    variables = model.trainable_variables
    optimizer.build(variables)
    banned = np.zeros(vocab_size, dtype=np.float32)
    banned[list(BANNED_IDS)] = -1e9

    @tf.function(reduce_retracing=True)
    def compiled(images, inputs, targets, weights):
        with tf.GradientTape() as tape:
            logits = tf.cast(model([images, inputs], training=False), tf.float32)  # (packed_rows(P), V)
            log_probs = tf.nn.log_softmax(logits + banned)
            chosen = tf.gather(log_probs, targets, batch_dims=1)  # (P,) log p of each sampled token
            loss = -tf.reduce_sum(chosen * weights)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss + 0.0 * tf.linalg.global_norm(gradients)  # NaN when a gradient is, though the loss is finite

    def step(images, inputs, targets, weights):
        real = targets != PAD_ID
        count = int(real.sum())
        rows = packed_rows(count)  # as many rows as the model's logits; the padding rows weigh 0
        packed_targets, packed_weights = np.zeros(rows, dtype=np.int32), np.zeros(rows, dtype=np.float32)
        packed_targets[:count], packed_weights[:count] = targets[real], weights[real]
        return compiled(images, inputs, packed_targets, packed_weights)

    return step


def self_critical(
    model,
    features: np.ndarray,
    vocab: Vocabulary,
    train: ImageSet,
    val: ImageSet,
    params: dict[str, Any],
    seed: int,
    cap,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    on_start: Callable[[dict[str, float]], None] = lambda scores: None,
    on_epoch: Callable[[dict[str, float]], None] = lambda scores: None,
    mirrored: Any = None,
) -> dict[str, Any]:
    """Fine-tune `model` in place for `params['epochs']` epochs (the `scst` section), or until the time `cap` passes.

    Sampling, greedy val scoring and the policy step run in the model's own precision (bfloat16 too).
    Stops after the first epoch that does not raise greedy val CIDEr-D, keeps the weights with the best
    (the cross-entropy weights if no epoch beats them) and returns a summary for metrics/finetune.json, with
    every epoch's val CIDEr-D and BLEU-4. `on_start` gets the starting model's val scores and `on_epoch` each
    epoch's scores (the points of the curves). `mirrored`: the mirrored view's feature rows (same order as
    `features`), or None to train on the images as they are.
    """
    from captioner.model.decode import CaptionDecoder

    k, batch_images = int(params["samples"]), int(params["batch_images"])
    rng = np.random.default_rng(seed)
    decoder = CaptionDecoder(model, vocab.max_length, compiled=False)  # sample/greedy use their own graph
    references, source = train.references, features
    if mirrored is not None:
        references = references + [[mirror_caption(ref) for ref in refs] for refs in references]
        source, draws = BothViews(features, mirrored), view_draws(seed)
    reward = CiderD(references)
    step = policy_step(model, params["learning_rate"], len(vocab))
    start = time.monotonic()

    def score_val() -> tuple[float, float]:
        """(CIDEr-D, BLEU-4) of greedy val captions."""
        return val_scores(decoder, features, val, vocab) if len(val.rows) else (float("nan"), float("nan"))

    score, bleu_val = score_val()
    history = {
        "start_val_cider": rounded(score, 4), "start_val_bleu4": rounded(bleu_val, 4),
        "val_cider": [], "val_bleu4": [], "train_reward": [], "sample_words": [],
    }
    on_start({"val_cider": history["start_val_cider"], "val_bleu4": history["start_val_bleu4"]})
    best, best_weights, best_epoch, epochs_run = score, model.get_weights(), 0, 0
    for epoch in range(int(params["epochs"])):
        order = rng.permutation(len(train.rows))
        rewards_seen, words_seen = [], []
        for first in range(0, len(order), batch_images):
            if cap.passed():
                break
            local = order[first : first + batch_images]
            rows, judged = train.rows[local], local  # judged: index of the references in `references`
            if mirrored is not None:
                rows, judged = show(draws, rows, local, len(features), len(train.rows))
            images = np.asarray(source[rows], dtype=np.float32)
            samples = decoder.sample(images, k, rng)
            captions = [vocab.decode(row) for row in samples]
            rewards = reward.scores(np.repeat(judged, k), captions)
            rewards_seen.append(require_finite(rewards.mean(), f"the self-critical reward at epoch {epoch + 1}"))
            words_seen.append(float(np.mean([len(c.split()) for c in captions])))
            inputs, targets, weights = policy_batch(samples, rewards, k)
            loss = step(images, inputs, targets, weights)
            require_finite(loss, f"the self-critical loss or gradient at epoch {epoch + 1}")
        if not rewards_seen:
            break
        epochs_run = epoch + 1
        score, bleu_val = score_val()
        history["val_cider"].append(rounded(score, 4))
        history["val_bleu4"].append(rounded(bleu_val, 4))
        history["train_reward"].append(round(float(np.mean(rewards_seen)), 4))
        history["sample_words"].append(round(float(np.mean(words_seen)), 2))
        on_epoch({key: history[key][-1] for key in ("val_cider", "val_bleu4", "train_reward", "sample_words")})
        log(
            f"self-critical epoch {epoch + 1}: mean sample CIDEr-D {np.mean(rewards_seen):.3f}, "
            f"{np.mean(words_seen):.1f} words, val CIDEr-D {score:.3f}, BLEU-4 {bleu_val:.3f}"
        )
        if not score <= best:  # also takes the first epoch when there is no val split (nan)
            best, best_weights, best_epoch = score, model.get_weights(), epoch + 1
        elif not math.isnan(score):  # an epoch that loses val CIDEr-D: later ones only drifted further (measured)
            log(f"self-critical: val CIDEr-D fell below its best {best:.3f}; stopping")
            break
        if cap.passed():
            break
    model.set_weights(best_weights)
    kept = best_epoch - 1
    return {
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "best_val_cider": history["val_cider"][kept] if best_epoch else history["start_val_cider"],
        "best_val_bleu4": history["val_bleu4"][kept] if best_epoch else history["start_val_bleu4"],
        "seconds": round(time.monotonic() - start, 1),
        **history,
    }
