"""Greedy and beam-search decoding, batched over images x beams with the step model (no prefix recomputation).

Beam search is plain NumPy around two calls, `init` (features -> state and context) and `step` (one word),
so it runs on TensorFlow (`CaptionDecoder`) and on the LiteRT runtime (`litert.LiteDecoder`) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID

if TYPE_CHECKING:
    from captioner.model.decoders import StepModels

BANNED_IDS = (PAD_ID, START_ID, UNK_ID)
_NEG = np.float32(-1e9)


@dataclass
class Beams:
    """One image's finished beams, best first (by log p / length**alpha).

    ids: token ids without <end>; log_probs: each beam's summed log-probability (its <end> included);
    scores: what the beams are ranked by, log p / length**alpha (length counts <end>);
    attention: per beam, (len(ids), L) attention weights over the grid cells for each word, or None.
    """

    ids: list[list[int]]
    log_probs: list[float]
    scores: list[float]
    attention: list[np.ndarray] | None


class BeamDecoder:
    """Beam search over a decoder's `init` (features -> [h, c, *context]) and `step` (word -> [log p, h, c(, alpha)]).

    Subclasses supply `_init_arrays` and `_step_arrays` on NumPy arrays, and may keep the context in their
    own tensor type (`_hold_context`), since every step of a chunk reuses it.
    """

    def __init__(self, max_length: int, attention: bool, chunk_images: int = 256):
        self.attention = attention  # whether steps report attention maps (beam_search keeps them per word)
        self.max_steps = max(int(max_length) - 1, 1)
        self.chunk_images = chunk_images

    def _init_arrays(self, images: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _step_arrays(self, inputs: list) -> list:
        raise NotImplementedError

    def _hold_context(self, context: list[np.ndarray]) -> list:
        """The context as `_step_arrays` takes it best (arrays here)."""
        return context

    def _start(self, images: np.ndarray):
        """Run `init` and the first word step: (masked log p (B, V), context, h, c, alpha (B, L) or None)."""
        h, c, *context = self._init_arrays(images.astype(np.float32, copy=False))
        tokens = np.full((len(images), 1), START_ID, dtype=np.int32)
        log_probs, h, c, alpha = self._run_step(tokens, h, c, self._hold_context(context))
        return log_probs, context, h, c, alpha

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray, context: list[np.ndarray]):
        """One decoding step for N rows: (log p (N, V) with pad/start/unk banned, new h, new c)."""
        return self._run_step(tokens, h, c, self._hold_context(context))[:3]

    def _run_step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray, context: list):
        """One decoding step: (masked log p (N, V), h, c, attention (N, L) or None)."""
        log_probs, h, c, *alpha = self._step_arrays([tokens.reshape(-1, 1).astype(np.int32), h, c, *context])
        log_probs = np.array(log_probs)
        log_probs[:, BANNED_IDS] = _NEG
        return log_probs, np.asarray(h), np.asarray(c), (np.asarray(alpha[0]) if alpha and self.attention else None)

    def _chunks(self, features: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(features), self.chunk_images):
            yield features[start : start + self.chunk_images]

    def beam(
        self,
        features: np.ndarray,
        beam_size: int,
        length_alpha: float = 1.0,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[int]]:
        """Beam search over all images at once; the final pick is by log p / length**alpha. Ids without <end>."""
        return [found.ids[0] for found in self.beam_search(features, beam_size, length_alpha, progress)]

    def beam_search(
        self,
        features: np.ndarray,
        beam_size: int,
        length_alpha: float = 1.0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Beams]:
        """Beam search over all images at once: every image's beams with their log-probabilities, best first."""
        out: list[Beams] = []
        for chunk in self._chunks(features):
            out.extend(self._beam_chunk(chunk, max(int(beam_size), 1), length_alpha))
            if progress is not None:
                progress(len(chunk))
        return out

    def _beam_chunk(self, images: np.ndarray, k: int, alpha: float) -> list[Beams]:
        n = len(images)
        log_probs, context, h, c, att = self._start(images)
        vocab = log_probs.shape[1]
        k = min(k, vocab - len(BANNED_IDS))
        first = _top_k(log_probs, k)  # (n, k)
        scores = np.take_along_axis(log_probs, first, axis=1).reshape(-1)  # (n*k,)
        seqs = first.reshape(-1, 1).astype(np.int32)
        h, c, context = _repeat_state(k, h, c, context)
        context = self._hold_context(context)  # beams of one image share its context, so it is the same every step
        maps = None if att is None else np.repeat(att, k, axis=0)[:, None]  # (n*k, steps, L)
        done = seqs[:, 0] == END_ID
        lengths = np.ones(n * k, dtype=np.float32)
        for _ in range(1, self.max_steps):
            if done.all():
                break
            log_probs, h, c, att = self._run_step(seqs[:, -1], h, c, context)
            log_probs[done] = _NEG
            log_probs[done, PAD_ID] = 0.0  # a finished beam carries its score forward unchanged
            total = (scores[:, None] + log_probs).reshape(n, k * vocab)
            best = _top_k(total, k)  # (n, k)
            rows = (np.arange(n)[:, None] * k + best // vocab).reshape(-1)
            tokens = (best % vocab).reshape(-1).astype(np.int32)
            scores = np.take_along_axis(total, best, axis=1).reshape(-1)
            lengths = lengths[rows] + (~done[rows])
            done = done[rows] | (tokens == END_ID)
            seqs = np.concatenate([seqs[rows], tokens[:, None]], axis=1)
            h, c = h[rows], c[rows]
            if maps is not None:
                maps = np.concatenate([maps[rows], att[rows][:, None]], axis=1)
        ranked = scores / lengths**alpha
        order = np.argsort(-ranked.reshape(n, k), axis=1, kind="stable")
        found = []
        for i in range(n):
            rows = i * k + order[i]
            ids = [_strip(seqs[row]) for row in rows]
            attention = None if maps is None else [_word_maps(seqs[row], maps[row]) for row in rows]
            found.append(Beams(ids=ids, log_probs=[float(scores[row]) for row in rows],
                               scores=[float(ranked[row]) for row in rows], attention=attention))
        return found


class CaptionDecoder(BeamDecoder):
    """Caption image features with a trained decoder; `init` runs once per image, `step` once per word.

    With `attention=True` (and an attention decoder) each step also returns the attention weights, for
    `beam_search` to report; otherwise the step graph leaves them out and costs nothing extra.
    `compiled=False` runs the models eagerly: slower per step, but no graph tracing (about a second),
    which wins when a process captions only a few images. `model` is one training model, or a sequence of them
    decoded as an ensemble (their per-word probabilities averaged, `decoders.ensemble_step_models`). With `mirror`
    (`text.mirror_ids`) the features come as both views of each image, (N, 2, ...), and every model reads both.
    """

    def __init__(self, model, max_length: int, chunk_images: int = 256, attention: bool = False,
                 compiled: bool = True, mirror: np.ndarray | None = None):
        import keras
        import tensorflow as tf

        from captioner.model.decoders import decoding_models

        self.models: StepModels = decoding_models(model, mirror)
        super().__init__(max_length, attention and self.models.has_attention, chunk_images)
        init, step = self.models.init, self.models.step
        if self.models.has_attention and not self.attention:
            step = keras.Model(step.inputs, step.outputs[:3], name=step.name)
        self._init = lambda x: init(tf.convert_to_tensor(x), training=False)
        self._step = lambda args: step([tf.convert_to_tensor(a) for a in args], training=False)
        if compiled:  # concrete functions: called per word, they skip tf.function's argument matching
            self._init = tf.function(self._init).get_concrete_function(_signature(init.inputs[0]))
            self._step = tf.function(self._step).get_concrete_function([_signature(t) for t in step.inputs])
        self._rollout_graph = tf.function(
            self._rollout_fn,
            input_signature=[
                _signature(init.inputs[0]),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((2,), tf.int32),
                tf.TensorSpec((), tf.bool),
            ],
        )

    def _init_arrays(self, images: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(t) for t in self._init(_tensors([images])[0])]

    def _step_arrays(self, inputs: list) -> list:
        return self._step(_tensors(inputs))

    def _hold_context(self, context: list) -> list:
        """Context as TensorFlow tensors: converted once per chunk, not once per step."""
        return _tensors(context)

    def greedy(self, features: np.ndarray) -> list[list[int]]:
        """Most likely next word at every step (argmax); token ids per image, without <end>."""
        out: list[list[int]] = []
        for chunk in self._chunks(features):
            out.extend(_strip(row) for row in self._rollout(chunk, 1, None))
        return out

    def sample(self, features: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Draw k captions per image word by word from the model (Gumbel-max): (n*k, steps) ids, <end> kept, 0-padded.

        Rows i*k .. i*k+k-1 belong to image i. Used by self-critical training, which needs the model's own samples;
        the whole loop runs in one TensorFlow graph, seeded from `rng`.
        """
        return self._rollout(features, k, rng.integers(0, 2**31 - 1, size=2).astype(np.int32))

    def _rollout(self, images: np.ndarray, k: int, seed: np.ndarray | None) -> np.ndarray:
        """Decode k rows per image (argmax, or Gumbel-max sampling when seeded): (n*k, max_steps) ids, <end> kept."""
        import tensorflow as tf

        stochastic = seed is not None
        seed = np.zeros(2, dtype=np.int32) if seed is None else seed
        seqs = self._rollout_graph(
            tf.convert_to_tensor(images, tf.float32), tf.constant(k, tf.int32), tf.constant(seed), tf.constant(stochastic)
        )
        return np.asarray(seqs)

    def _rollout_fn(self, images, k, seed, stochastic):
        """The rollout as a graph: `init` once per image, then `step` per word until every row has ended."""
        import tensorflow as tf

        h, c, *context = self.models.init(images, training=False)
        h, c = tf.repeat(tf.cast(h, tf.float32), k, axis=0), tf.repeat(tf.cast(c, tf.float32), k, axis=0)
        context = [tf.repeat(x, k, axis=0) for x in context]
        rows = tf.shape(h)[0]
        banned = np.zeros(self.models.vocab_size, dtype=np.float32)
        banned[list(BANNED_IDS)] = _NEG
        token = tf.fill([rows, 1], START_ID)
        done = tf.zeros([rows], tf.bool)
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=tf.TensorShape([None]))
        for t in tf.range(self.max_steps):
            log_probs, h, c = self.models.step([token, h, c, *context], training=False)[:3]
            h, c = tf.cast(h, tf.float32), tf.cast(c, tf.float32)
            scores = tf.cast(log_probs, tf.float32) + banned
            if stochastic:
                uniform = tf.random.stateless_uniform(
                    tf.shape(scores), seed=tf.random.experimental.stateless_fold_in(seed, t), minval=1e-20, maxval=1.0
                )
                scores += -tf.math.log(-tf.math.log(uniform))
            picked = tf.where(done, PAD_ID, tf.argmax(scores, axis=1, output_type=tf.int32))
            out = out.write(t, picked)
            done = done | tf.equal(picked, END_ID)
            token = picked[:, None]
            if tf.reduce_all(done):
                break
        seqs = tf.transpose(out.stack())
        return tf.pad(seqs, [[0, 0], [0, self.max_steps - tf.shape(seqs)[1]]])


def _word_maps(seq: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The attention rows of the words `_strip` keeps: (words, L)."""
    keep = []
    for t, i in enumerate(seq.tolist()):
        if i == END_ID:
            break
        if i not in BANNED_IDS:
            keep.append(t)
    return maps[keep]


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values, largest first, ties to the lower index (a stable argsort's
    first k), found by partitioning instead of sorting the whole row (rows with a tie at the k-th value sort)."""
    if k < values.shape[1]:
        part = np.argpartition(-values, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(values, part, axis=1).min(axis=1, keepdims=True)
        ties = (values >= kth).sum(axis=1) > k
        if ties.any():
            part[ties] = np.argsort(-values[ties], axis=1, kind="stable")[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.lexsort((part, -np.take_along_axis(values, part, axis=1)), axis=-1)
    return np.take_along_axis(part, order, axis=1)


def _repeat_state(k: int, h: np.ndarray, c: np.ndarray, context: list[np.ndarray]):
    """Each image's LSTM state and context repeated k times (rows i*k .. i*k+k-1), for beams or samples."""
    return np.repeat(h, k, axis=0), np.repeat(c, k, axis=0), [np.repeat(x, k, axis=0) for x in context]


def _tensors(arrays: list) -> list:
    """Arrays as TensorFlow tensors (tensors pass through), as the decoding graphs take them."""
    import tensorflow as tf

    return [tf.convert_to_tensor(a) for a in arrays]


def _signature(tensor):
    """A TensorSpec with a free batch dimension for a Keras input, so decoding traces each graph once."""
    import tensorflow as tf

    return tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype)


def _strip(ids: np.ndarray) -> list[int]:
    """Token ids up to (not including) <end>, without pad/start/unk."""
    out = []
    for i in ids.tolist():
        if i == END_ID:
            break
        if i not in BANNED_IDS:
            out.append(int(i))
    return out

