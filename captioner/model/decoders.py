"""Decoder architectures (merge, inject, attention) as Keras 3 functional models.

One set of named layers serves two graphs: the training model (images, whole input sequences) ->
logits over every position (teacher forcing, one forward pass per caption), and a pair of decoding
models rebuilt from the same layers: `init` (image -> LSTM state + per-image context, run once) and
`step` (previous token + state + context -> log-probabilities + new state, run once per word), so beam
search never recomputes a prefix. Only the training model is saved (.keras, loads with safe_mode).

The training model takes B images and B*K captions (rows i*K .. i*K+K-1 caption image i, K = 1 or
more): the image side (grid projections, keys, initial state) runs once per image and is repeated
per caption, so grouping an image's captions in one batch makes that work K times cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
from keras import layers, ops

from captioner.core.errors import CaptionerError
from captioner.data.text import END_ID, PAD_ID
from captioner.vision.efficientnet_lite import TAIL_MODEL, VARIANTS, build_tail, tail_stage

DECODERS = ("merge", "inject", "attention")
_PACKAGE = "captioner"
PACK_ROWS = 128  # packed logits come in multiples of this many rows (see `packed_rows`)


def packed_rows(real: int) -> int:
    """Rows of the packed logits for `real` real target tokens (an int or an int tensor): a multiple of PACK_ROWS.

    Few distinct shapes instead of one per batch: oneDNN keeps a compiled bfloat16 matmul (with its
    reordered weights) per shape it meets, so exact row counts grew training's memory by 0.6-0.8 MB
    per step (see benchmarks/shape_memory.py).
    """
    return (real + PACK_ROWS - 1) // PACK_ROWS * PACK_ROWS


def _zero_pad(values, rows):
    """A 1-D tensor extended with zeros to `rows` entries (the packing padding)."""
    return ops.concatenate([values, ops.zeros((rows - ops.shape(values)[0],), dtype=values.dtype)], axis=0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class JoinVector(layers.Layer):
    """Broadcast a per-image vector (B, D) over a sequence (B, T, E): add it (D == E) or concatenate it."""

    def __init__(self, mode: str = "add", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("add", "concat"):
            raise ValueError(f"JoinVector mode must be add or concat, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        seq, vec = inputs
        vec = ops.expand_dims(vec, 1)
        if self.mode == "add":
            return seq + vec
        vec = ops.broadcast_to(vec, (ops.shape(seq)[0], ops.shape(seq)[1], ops.shape(vec)[-1]))
        return ops.concatenate([seq, vec], axis=-1)

    def compute_output_shape(self, input_shapes):
        seq, vec = input_shapes
        if self.mode == "add":
            return seq
        return (*seq[:-1], seq[-1] + vec[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ZeroState(layers.Layer):
    """A (B, units) zero tensor shaped after its input's batch: the merge decoder's initial LSTM state."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, inputs):
        return ops.zeros((ops.shape(inputs)[0], self.units), dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RepeatRows(layers.Layer):
    """Repeat each image's row K times, K = captions // images, so rows line up with the captions (B*K, T)."""

    def call(self, inputs):
        per_image, captions = inputs
        repeats = ops.shape(captions)[0] // ops.shape(per_image)[0]
        return ops.repeat(per_image, repeats, axis=0)

    def compute_output_shape(self, input_shapes):
        per_image, captions = input_shapes
        return (captions[0], *per_image[1:])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackPositions(layers.Layer):
    """Keep only the positions that predict a real word: (N, T, D) -> (packed_rows(P), D), row-major.

    Input position t predicts token t+1, a real word or <end>, exactly when token t is neither pad nor
    <end>; so the output projection and the loss skip the padding of the batch's shorter captions. The
    P real rows come first; then copies of row 0 up to `packed_rows(P)`, which the losses weigh 0.
    """

    def call(self, inputs):
        hidden, tokens = inputs
        keep = ops.logical_and(ops.not_equal(tokens, PAD_ID), ops.not_equal(tokens, END_ID))
        index = ops.nonzero(ops.reshape(keep, (-1,)))[0]
        index = _zero_pad(index, packed_rows(ops.shape(index)[0]))
        return ops.take(ops.reshape(hidden, (-1, hidden.shape[-1])), index, axis=0)

    def compute_output_shape(self, input_shapes):
        return (None, input_shapes[0][-1])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GridAttention(layers.Layer):
    """Multi-head scaled dot-product attention of each word's LSTM output over the grid cells.

    Inputs: queries (B, T, U), keys (B, L, A) and values (B, L, D), both projected once per image; A and D
    split into `heads` equal parts. Returns the context (B, T, D) and the weights (B, T, L) averaged over
    heads (the picture of where each word looked). Every position attends independently, so training attends at all T
    positions in one batched matmul instead of a (B, T, L, A) additive-attention tensor.
    """

    def __init__(self, heads: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(heads)

    def build(self, input_shapes):
        query_shape, key_shape, value_shape = input_shapes
        for dim, what in ((key_shape[-1], "key"), (value_shape[-1], "value")):
            if dim % self.heads:
                raise ValueError(f"{what} size {dim} is not divisible by {self.heads} attention heads")
        self.query_kernel = self.add_weight(
            name="query_kernel", shape=(query_shape[-1], key_shape[-1]), initializer="glorot_uniform"
        )

    def _split(self, x):
        """(B, N, H*d) -> (B, H, N, d)."""
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, n, self.heads, x.shape[-1] // self.heads)), (0, 2, 1, 3))

    def call(self, inputs):
        queries, keys, values = inputs
        q = self._split(ops.matmul(queries, self.query_kernel))  # (B, H, T, d)
        k, v = self._split(keys), self._split(values)  # (B, H, L, d)
        scale = ops.cast(1.0 / math.sqrt(keys.shape[-1] // self.heads), q.dtype)
        alpha = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scale, axis=-1)  # (B, H, T, L)
        context = ops.transpose(ops.matmul(alpha, v), (0, 2, 1, 3))  # (B, T, H, d)
        b, t = ops.shape(queries)[0], ops.shape(queries)[1]
        context = ops.reshape(context, (b, t, values.shape[-1]))
        return context, ops.mean(alpha, axis=1)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder was built with; recorded in the bundle and used to rebuild the decoding graphs."""

    kind: str
    vocab_size: int
    feature_shape: tuple[int, ...]
    embedding_dim: int
    units: int
    dropout: float
    heads: int = 8  # attention heads (attention decoder only)
    output_units: int | None = None  # width of the layer before the logits (merge, attention); None = units
    tail: str | None = None  # attention: the EfficientNet-Lite whose stages after 5 or 6 (by the channels) run first


def decoder_input_shape(kind: str, feature_shape: Sequence[int]) -> tuple[int, ...]:
    """The image input a decoder takes: a vector for merge/inject (grids get pooled), the grid for attention."""
    feature_shape = tuple(int(d) for d in feature_shape)
    if kind == "attention":
        if len(feature_shape) != 3:
            raise ValueError(f"the attention decoder needs grid features (h, w, C), got shape {feature_shape}")
        return feature_shape
    return feature_shape[-1:]


def _make_layers(spec: DecoderSpec, dtype: str) -> dict[str, layers.Layer]:
    """Create every named layer of a decoder once, so the training and decoding graphs share weights.

    `dtype` is a Keras dtype policy ("float32" or "mixed_bfloat16"); the logits always leave in float32.
    """
    u, e, v, p = spec.units, spec.embedding_dim, spec.vocab_size, spec.dropout
    if spec.tail and spec.kind != "attention":
        raise ValueError(f"only the attention decoder runs an encoder tail, not {spec.kind}")
    out_u = spec.output_units or u
    made: dict[str, layers.Layer] = {
        "embedding": layers.Embedding(v, e, name="embedding", dtype=dtype),
        "embedding_dropout": layers.Dropout(p, name="embedding_dropout", dtype=dtype),
        "image_dropout": layers.Dropout(p, name="image_dropout", dtype=dtype),
        "lstm": layers.LSTM(u, return_sequences=True, return_state=True, name="lstm", dtype=dtype),
        "output_dropout": layers.Dropout(p, name="output_dropout", dtype=dtype),
        "logits": layers.Dense(v, name="logits", dtype=dtype),
        "logits_float32": layers.Activation("linear", name="logits_float32", dtype="float32"),
        "per_caption": RepeatRows(name="per_caption", dtype=dtype),
        "pack": PackPositions(name="pack", dtype=dtype),
    }
    if spec.kind == "merge":
        made["image_proj"] = layers.Dense(u, activation="relu", name="image_proj", dtype=dtype)
        made["zero_state"] = ZeroState(u, name="zero_state", dtype=dtype)
        made["merge"] = JoinVector("add", name="merge", dtype=dtype)
        made["hidden"] = layers.Dense(out_u, activation="relu", name="hidden", dtype=dtype)
    elif spec.kind == "inject":
        made["init_h"] = layers.Dense(u, activation="tanh", name="init_h", dtype=dtype)
        made["init_c"] = layers.Dense(u, activation="tanh", name="init_c", dtype=dtype)
    elif spec.kind == "attention":
        h, w, channels = spec.feature_shape
        if spec.tail:
            made[TAIL_MODEL] = _tail(spec.tail, (h, w, channels), dtype)
            h, w, channels = (int(d) for d in made[TAIL_MODEL].output.shape[1:])
        made["flatten_grid"] = layers.Reshape((h * w, channels), name="flatten_grid", dtype=dtype)
        made["grid_values"] = layers.Dense(u, activation="relu", name="grid_values", dtype=dtype)
        made["grid_keys"] = layers.Dense(u, use_bias=False, name="grid_keys", dtype=dtype)
        made["grid_mean"] = layers.GlobalAveragePooling1D(name="grid_mean", dtype=dtype)
        made["global_proj"] = layers.Dense(e, activation="relu", name="global_proj", dtype=dtype)
        made["init_h"] = layers.Dense(u, activation="tanh", name="init_h", dtype=dtype)
        made["init_c"] = layers.Dense(u, activation="tanh", name="init_c", dtype=dtype)
        made["word_image"] = JoinVector("concat", name="word_image", dtype=dtype)
        made["attend"] = GridAttention(spec.heads, name="attend", dtype=dtype)
        made["merge"] = layers.Add(name="merge", dtype=dtype)
        made["hidden"] = layers.Dense(out_u, activation="relu", name="hidden", dtype=dtype)
    else:
        raise ValueError(f"unknown decoder {spec.kind!r} (known: {', '.join(DECODERS)})")
    return made


def _tail(encoder: str, shape: tuple[int, int, int], dtype: str) -> keras.Model:
    """The encoder's stages after the one whose map has `shape` and its head (random weights, `dtype`) -> the grid."""
    if encoder not in VARIANTS:
        raise ValueError(f"decoder tail {encoder!r} is not an EfficientNet-Lite (known: {', '.join(VARIANTS)})")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        return build_tail(encoder, shape[:2], tail_stage(encoder, shape[2]))
    finally:
        keras.config.set_dtype_policy(previous)


def _encode(kind: str, lay: dict, image):
    """Image input -> (h0, c0, context tensors the step needs), one row per image."""
    if kind == "merge":
        proj = lay["image_proj"](lay["image_dropout"](image))
        zero = lay["zero_state"](image)
        return zero, zero, [proj]
    if kind == "inject":
        img = lay["image_dropout"](image)
        return lay["init_h"](img), lay["init_c"](img), []
    if TAIL_MODEL in lay:
        image = lay[TAIL_MODEL](image)
    cells = lay["flatten_grid"](image)
    mean = lay["grid_mean"](cells)
    values = lay["grid_values"](lay["image_dropout"](cells))
    keys = lay["grid_keys"](values)
    global_vec = lay["global_proj"](lay["image_dropout"](mean))
    return lay["init_h"](mean), lay["init_c"](mean), [values, keys, global_vec]


def _decode(kind: str, lay: dict, tokens, h0, c0, context):
    """Token ids (N, T) + state + context -> (output features (N, T, U), h, c, attention weights (N, T, L) or None).

    T is the whole caption (training) or 1 (a decoding step); `_logits` turns the features into logits.
    """
    words = lay["embedding_dropout"](lay["embedding"](tokens))
    if kind == "attention":
        words = lay["word_image"]([words, context[2]])
    seq, h, c = lay["lstm"](words, initial_state=[h0, c0])
    alpha = None
    if kind == "merge":
        out = lay["hidden"](lay["merge"]([seq, context[0]]))
    elif kind == "inject":
        out = seq
    else:
        attended, alpha = lay["attend"]([seq, context[1], context[0]])
        out = lay["hidden"](lay["merge"]([seq, attended]))
    return out, h, c, alpha


def _logits(lay: dict, out):
    """Output features -> float32 next-token logits."""
    return lay["logits_float32"](lay["logits"](lay["output_dropout"](out)))


def build_decoder(spec: DecoderSpec, dtype: str = "float32") -> keras.Model:
    """The training model: (images (B, ...), input ids (B*K, T)) -> logits (packed_rows(P), V), P real next tokens.

    The logits come packed, row-major, for the positions whose target is a real token (`caption_loss`
    packs the 0-padded targets (B*K, T) the same way), so padding costs neither the output projection nor
    the loss, and every input keeps one row per image or caption (what a distribution strategy splits).
    Rows past P are padding to a shape bucket; only the first P rows are logits of real positions.
    """
    if spec.kind not in DECODERS:
        raise ValueError(f"unknown decoder {spec.kind!r} (known: {', '.join(DECODERS)})")
    lay = _make_layers(spec, dtype)
    image = keras.Input(decoder_input_shape(spec.kind, spec.feature_shape), name="image")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h0, c0, context = _encode(spec.kind, lay, image)
    h0, c0, *context = (lay["per_caption"]([x, tokens]) for x in (h0, c0, *context))
    out, _, _, _ = _decode(spec.kind, lay, tokens, h0, c0, context)
    logits = _logits(lay, lay["pack"]([out, tokens]))
    return keras.Model([image, tokens], logits, name=f"captioner_{spec.kind}")



def decoder_kind(model: keras.Model) -> str:
    """The decoder kind a training model was built as (from its name)."""
    kind = model.name.removeprefix("captioner_")
    if kind not in DECODERS:
        raise ValueError(f"model {model.name!r} is not a captioner decoder")
    return kind


@dataclass
class StepModels:
    """Decoding graphs sharing the training model's weights: `init` runs once per image, `step` once per word.

    `step` returns [log p (N, V), h, c] and, when `has_attention` is true, a fourth output: the attention
    weights (N, L) over the L grid cells for the word it scored.
    """

    kind: str
    init: keras.Model
    step: keras.Model
    vocab_size: int
    has_attention: bool = False


def step_models(model: keras.Model) -> StepModels:
    """Rebuild `init` (image -> [h, c, *context]) and `step` ([token (N,1), h, c, *context] -> [log p, h, c(, alpha)])."""
    kind = decoder_kind(model)
    lay = {layer.name: layer for layer in model.layers}
    image = keras.Input(model.inputs[0].shape[1:], name="image")
    h0, c0, context = _encode(kind, lay, image)
    init = keras.Model(image, [h0, c0, *context], name=f"{kind}_init")

    token = keras.Input((1,), dtype="int32", name="token")
    h_in = keras.Input(h0.shape[1:], name="h")
    c_in = keras.Input(c0.shape[1:], name="c")
    ctx_in = [keras.Input(t.shape[1:], name=f"context_{i}") for i, t in enumerate(context)]
    out, h, c, alpha = _decode(kind, lay, token, h_in, c_in, ctx_in)
    logits = _logits(lay, out)
    flat = layers.Reshape((logits.shape[-1],), name="step_logits")(logits)  # named: reproducible LiteRT export
    log_probs = layers.Activation("log_softmax", name="step_log_probs")(flat)
    outputs = [log_probs, h, c]
    if alpha is not None:
        outputs.append(layers.Reshape((alpha.shape[-1],), name="step_attention")(alpha))
    step = keras.Model([token, h_in, c_in, *ctx_in], outputs, name=f"{kind}_step")
    return StepModels(kind=kind, init=init, step=step, vocab_size=int(logits.shape[-1]), has_attention=alpha is not None)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeatureSlice(layers.Layer):
    """Columns `start:stop` of the last axis: one ensemble member's part of the concatenated LSTM state."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[..., self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MeanProbabilities(layers.Layer):
    """The log of the members' mean next-word probability from their log-probabilities: M x (N, V) -> (N, V).

    Computed as logsumexp - log M (equal to log(mean(exp)), without underflow for rare words) in elementwise ops
    only (LiteRT's reductions over a stacked axis were 2-4 times slower); one member passes through bit for bit.
    """

    def call(self, inputs):
        top = inputs[0]
        for x in inputs[1:]:
            top = ops.maximum(top, x)
        total = ops.exp(inputs[0] - top)
        for x in inputs[1:]:
            total = total + ops.exp(x - top)
        return top + ops.log(total) - math.log(len(inputs))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class View(layers.Layer):
    """One view of stacked views: (N, 2, ...) -> (N, ...); view 0 is the image as it is, view 1 mirrored."""

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, inputs):
        return inputs[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "index": self.index}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MapIds(layers.Layer):
    """Token ids mapped through a fixed table (`table[ids]`): the image's words as the mirrored view spells them."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = [int(i) for i in table]

    def call(self, inputs):
        return ops.take(ops.convert_to_tensor(np.asarray(self.table, dtype="int32")), inputs, axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "table": self.table}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Reorder(layers.Layer):
    """The last axis read in a fixed order (`x[..., order]`): the mirrored view's words or cells in the image's order."""

    def __init__(self, order, **kwargs):
        super().__init__(**kwargs)
        self.order = [int(i) for i in order]

    def call(self, inputs):
        return ops.take(inputs, ops.convert_to_tensor(np.asarray(self.order, dtype="int32")), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.order))

    def get_config(self):
        return {**super().get_config(), "order": self.order}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MeanMaps(layers.Layer):
    """The members' attention maps averaged: M x (N, L) -> (N, L)."""

    def call(self, inputs):
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total / len(inputs)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def ensemble_step_models(models: Sequence[keras.Model], mirror: np.ndarray | None = None) -> StepModels:
    """`init` and `step` of an ensemble of training models of one kind and vocabulary, decoded as one model.

    The members' LSTM states are concatenated along the feature axis (`h`, `c`: what beam search reorders each
    word) and their context tensors follow one another (`context_0`.. member 1's, then member 2's, ...), so a beam
    search over one decoder's `init`/`step` runs the ensemble unchanged. `step` slices each member's state back out,
    runs the member's own step and returns log(mean of the members' probabilities), the concatenated h and c and,
    for attention decoders, the mean of the members' attention maps. Every layer is named: reproducible LiteRT export.

    With `mirror` (token id -> its id in the mirrored caption, `text.mirror_ids`) each member also reads the image
    mirrored left-right: `init` takes both views stacked, (N, 2, *features), view 1 the mirrored image's features,
    and the mirrored view's words (`left`/`right` swapped) and attention cells (columns reversed) are mapped back to
    the image's before the mean, so one decoder reads each image twice, as flipped-view training showed it.
    """
    members = [step_models(model) for model in models]
    kind = members[0].kind
    for i, member in enumerate(members[1:], start=2):
        if (member.kind, member.vocab_size) != (kind, members[0].vocab_size):
            raise ValueError(f"ensemble member {i} is a {member.kind} decoder of {member.vocab_size} tokens, member 1 "
                             f"a {kind} decoder of {members[0].vocab_size}")
    shape = tuple(models[0].inputs[0].shape[1:])
    views = (0,) if mirror is None else (0, 1)
    image = keras.Input(shape if mirror is None else (2, *shape), name="image")
    seen = [image] if mirror is None else [View(v, name=f"view{v}")(image) for v in views]
    inits = [keras.Model(m.init.inputs, m.init.outputs, name=f"member{i}_init") for i, m in enumerate(members)]
    readers = [(i, v) for i in range(len(members)) for v in views]  # (member, view): one state and context each
    parts = [inits[i](seen[v]) for i, v in readers]
    h0 = layers.Concatenate(axis=-1, name="init_h")([part[0] for part in parts])
    c0 = layers.Concatenate(axis=-1, name="init_c")([part[1] for part in parts])
    contexts = [tensor for part in parts for tensor in part[2:]]
    init = keras.Model(image, [h0, c0, *contexts], name=f"{kind}_ensemble_init")

    token = keras.Input((1,), dtype="int32", name="token")
    h_in, c_in = keras.Input(h0.shape[1:], name="h"), keras.Input(c0.shape[1:], name="c")
    ctx_in = [keras.Input(t.shape[1:], name=f"context_{j}") for j, t in enumerate(contexts)]
    tokens = [token] if mirror is None else [token, MapIds(mirror, name="mirrored_token")(token)]
    steps = [keras.Model(m.step.inputs, m.step.outputs, name=f"member{i}_step") for i, m in enumerate(members)]
    outs, start, first_context = [], 0, 0
    for (i, v), part in zip(readers, parts):
        name = f"member{i}" if mirror is None else f"member{i}_view{v}"
        stop = start + int(part[0].shape[-1])
        h = FeatureSlice(start, stop, name=f"{name}_h")(h_in)
        c = FeatureSlice(start, stop, name=f"{name}_c")(c_in)
        own = ctx_in[first_context : first_context + len(part) - 2]
        out = steps[i]([tokens[v], h, c, *own])
        if v == 1:  # the mirrored view's words and attention cells, in the image's order
            out = [Reorder(mirror, name=f"{name}_words")(out[0]), *out[1:3],
                   *(Reorder(mirrored_cells(int(maps.shape[-1])), name=f"{name}_cells")(maps) for maps in out[3:])]
        outs.append(out)
        start, first_context = stop, first_context + len(part) - 2
    outputs = [MeanProbabilities(name="mean_probabilities")([out[0] for out in outs]),
               layers.Concatenate(axis=-1, name="step_h")([out[1] for out in outs]),
               layers.Concatenate(axis=-1, name="step_c")([out[2] for out in outs])]
    if members[0].has_attention:
        outputs.append(MeanMaps(name="mean_attention")([out[3] for out in outs]))
    step = keras.Model([token, h_in, c_in, *ctx_in], outputs, name=f"{kind}_ensemble_step")
    return StepModels(kind=kind, init=init, step=step, vocab_size=members[0].vocab_size,
                      has_attention=members[0].has_attention)


def mirrored_cells(cells: int) -> np.ndarray:
    """Cell index -> the index of the same place in the mirrored image's square grid of `cells` cells (row-major)."""
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(f"mirrored views need a square attention grid, got {cells} cells")
    return np.arange(cells).reshape(side, side)[:, ::-1].reshape(-1)


def decoding_models(model: keras.Model | Sequence[keras.Model], mirror: np.ndarray | None = None) -> StepModels:
    """The decoding graphs of one training model, or of an ensemble when given a sequence of them (even of one);
    with `mirror`, of the model(s) reading each image as it is and mirrored (`ensemble_step_models`)."""
    if mirror is None and isinstance(model, keras.Model):
        return step_models(model)
    return ensemble_step_models([model] if isinstance(model, keras.Model) else model, mirror)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CaptionLoss(keras.losses.Loss):
    """Mean cross-entropy of the packed logits (P', V) against the P real tokens of 0-padded targets (N, T).

    The first P rows of the logits are the real positions in row-major order; rows past P are packing
    padding and count for nothing. Returns the mean over the P real tokens (a scalar).
    """

    def __init__(self, name: str = "caption_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        flat = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        targets = ops.take(flat, ops.nonzero(ops.not_equal(flat, PAD_ID))[0], axis=0)
        real, rows = ops.shape(targets)[0], ops.shape(y_pred)[0]
        losses = keras.losses.sparse_categorical_crossentropy(_zero_pad(targets, rows), y_pred, from_logits=True)
        counted = ops.cast(ops.arange(rows) < real, losses.dtype)
        mean = ops.sum(losses * counted) / ops.maximum(ops.cast(real, losses.dtype), 1.0)
        return mean / _replicas_in_sync()


def _replicas_in_sync() -> int:
    """Replicas of the enclosing tf.distribute strategy (1 outside one).

    Keras divides a vector loss by the replica count (replicas' gradients are summed) and multiplies the
    logged loss back, but leaves a scalar loss such as CaptionLoss's undivided: it is divided here, or
    distributed training would log (and step with) the replica count times the loss.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def caption_loss() -> keras.losses.Loss:
    """The training loss: mean cross-entropy over real target tokens only (pad positions have no logits)."""
    return CaptionLoss()


def load_decoder(path) -> keras.Model:
    """Load a saved training model (.keras) safely (no Lambda, no pickle) and uncompiled."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
